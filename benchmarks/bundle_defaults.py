"""The default pretraining runs as a user runs them (README command (1) and its MRI twin), timed and evaluated.

For each bundle: ``python -m monai.bundle run --config_file bundles/<b>/train.json`` with nothing overridden but the
output folders (a fresh temporary bundle root, so nothing resumes), then ``evaluate.json`` on its weights. Records
the wall time, the peak RSS of the run, the threads it chose, the validation EPE of every epoch and the evaluation
EPE of the saved weights vs the zero field, into ``benchmarks/results/bundle_defaults.json`` (the docs/bundles.md
table is generated from it by ``benchmarks/readme_tables.py``)::

    python benchmarks/bundle_defaults.py              # about 15-20 minutes on 2 idle cores

and the nnU-Net backbone at the same defaults (``benchmarks/results/bundle_defaults_nnunet.json``)::

    python benchmarks/bundle_defaults.py --bundles cover_mri --overlays backbone_nnunet.json \
        --output benchmarks/results/bundle_defaults_nnunet.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cover3d.engine import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def run_measured(command: list[str], log_file: Path) -> tuple[float, float]:
    """Run ``command`` with its output in ``log_file``; return (wall seconds, peak RSS GiB of that process)."""
    start = time.monotonic()
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log_file.read_text()[-3000:]}")
    return time.monotonic() - start, usage.ru_maxrss / 1024**2


def run_default(bundle: str, overlays: list[str] = ()) -> dict:
    """Train ``bundle`` with its defaults (and ``overlays``, config files of the bundle such as
    ``backbone_nnunet.json``), then evaluate the weights; return the measurements."""
    config = REPO / "bundles" / bundle
    training = [str(config / name) for name in ("train.json", *overlays)]
    with tempfile.TemporaryDirectory() as folder:
        outputs = ["--ckpt_dir", f"{folder}/models", "--output_dir", f"{folder}/runs"]
        seconds, peak_gib = run_measured([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(training), *outputs],
                                         Path(folder) / "train.log")  # fmt: skip
        log = (Path(folder) / "train.log").read_text()
        report = Path(folder) / "eval.json"
        configs = str([*training, str(config / "evaluate.json")])
        run_measured([sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, *outputs, "--eval_file", str(report)],
                     Path(folder) / "eval.log")  # fmt: skip
        evaluation = json.loads(report.read_text())
    return {
        "bundle": bundle,
        "overlays": list(overlays),
        "wall_seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_gib, 2),
        "threads": int(re.search(r"using (\d+) CPU thread", log).group(1)),
        "validation_epe": [float(v) for v in re.findall(r"validation EPE ([0-9.]+) vox", log)],
        "validation_epe_identity": float(re.findall(r"validation EPE [0-9.]+ vox \(identity ([0-9.]+)\)", log)[-1]),
        "eval_epe": evaluation["epe"],
        "eval_epe_identity": evaluation["epe_identity"],
        "eval_pairs": evaluation["pairs"],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=["cover_ct", "cover_mri"])
    parser.add_argument("--overlays", nargs="*", default=[],
                        help="config files of the bundle layered on train.json, e.g. backbone_nnunet.json")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "bundle_defaults.json"))
    args = parser.parse_args(argv)
    results = []
    for bundle in args.bundles:
        results.append(run_default(bundle, args.overlays))
        r = results[-1]
        print(f"{bundle}: {r['wall_seconds'] / 60:.1f} min, {r['threads']} thread(s), evaluation EPE {r['eval_epe']:.2f} "
              f"vs zero field {r['eval_epe_identity']:.2f} voxels", flush=True)
    write_json_atomic(results, args.output)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
