"""``python -m MODULE ARGS`` for the tests, as ``subprocess.run`` runs it, without paying Python's start-up each time.

Importing torch, MONAI and ignite costs about 6 s of CPU, most of a cheap bundle run. :func:`run_module` asks a
zygote process, which imported them once, to fork a child per command: its own process, working directory,
environment, output and exit code (an uncaught exception goes through ``sys.excepthook`` and exits 1, ``sys.exit``
as usual), from an interpreter that has imported those libraries and nothing else. ``multiprocessing``'s
forkserver also preloads modules, but its children run a target function rather than a ``__main__`` module, and
nothing waits for the server at exit, so the children's CPU time would be missing from pytest's. Tests whose subject
is the interpreter's start-up, a ``kill -9`` or torchrun's worker processes keep ``subprocess``.

Run as a script, this file is the zygote: one JSON request per line on stdin; on stdout, per request, the child's
process id, then its exit code.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

_zygote: subprocess.Popen | None = None


def run_module(
    module: str,
    args: Sequence[str],
    cwd: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)``, in a fork of the zygote (started on first use); past ``timeout`` seconds the child is killed
    and :class:`subprocess.TimeoutExpired` raised."""
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        _zygote = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        atexit.register(_stop, _zygote)
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder, "stdout"), Path(folder, "stderr")
        request = {"module": module, "args": [str(a) for a in args], "cwd": str(cwd),
                   "env": dict(os.environ if env is None else env), "stdout": str(stdout), "stderr": str(stderr)}  # fmt: skip
        _zygote.stdin.write(json.dumps(request).encode() + b"\n")
        child = _reply(_zygote)
        returncode = _reply(_zygote, timeout)
        if returncode is None:
            os.kill(child, signal.SIGKILL)
            _reply(_zygote)
            raise subprocess.TimeoutExpired([module, *args], timeout)
        output = [path.read_text(errors="replace") for path in (stdout, stderr)]
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], returncode, *output)


def _reply(zygote: subprocess.Popen, timeout: float | None = None) -> int | None:
    """The zygote's next reply line as an int; None after ``timeout`` seconds without one."""
    line, fd = b"", zygote.stdout.fileno()
    while not line.endswith(b"\n"):
        if not select.select([fd], [], [], timeout)[0]:
            return None
        byte = os.read(fd, 1)  # unbuffered: nothing read ahead of the line
        if not byte:
            raise RuntimeError(f"the zygote ended (exit code {zygote.wait()})")
        line += byte
    return int(line)


def _stop(zygote: subprocess.Popen) -> None:
    """End the zygote and wait for it (its children's CPU time then counts in this process's)."""
    zygote.stdin.close()
    zygote.wait()


def _serve() -> None:
    """The zygote: import what the commands import, then fork one child per request and report its exit code."""
    replies = os.fdopen(os.dup(1), "w")  # the replies' pipe; what anything else prints goes to stderr
    os.dup2(2, 1)
    import monai.bundle.__main__  # noqa: F401 - with torch, ignite and fire
    from monai.bundle.config_item import ComponentLocator

    import cover3d.data  # noqa: F401
    import cover3d.engine  # noqa: F401
    import cover3d.networks  # noqa: F401

    ComponentLocator().get_component_module_name("LoadImaged")  # the config parser's scan of MONAI's packages
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            replies.close()
            _become(request)  # never returns
        replies.write(f"{child}\n")
        replies.flush()
        replies.write(f"{os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])}\n")
        replies.flush()


def _become(request: dict) -> None:
    """In the forked child: the request's directory, environment and output files, then its module as
    ``__main__``; the interpreter's own exit handling follows (exceptions, ``sys.exit``, atexit, flushing)."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdin = open(0, closefd=False)
    sys.argv = [request["module"], *request["args"]]  # runpy puts the module's path first, as ``-m`` does
    sys.path[0] = request["cwd"]  # ``-m`` searches the working directory first
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)


if __name__ == "__main__":
    _serve()
