"""Every shell command in README.md and docs/*.md is executed (or checked) here, as written.

``COMMANDS`` maps each command found in a ``bash`` block (continuation lines joined, trailing comments dropped) to how
it is tested: run from the repository root with cheap overrides appended (few iterations, small patches, outputs in a
temporary folder: nothing in the repository is written, which each run checks), run expecting the one-line error the
docs show, checked against the entry point's ``--help`` (multi-hour protocols), or named test that runs it. A command
in the docs without an entry fails, and so does an entry whose command left the docs. A plain ``python -m`` command
runs in a fork of an interpreter that has imported torch and MONAI (``tests/python_command.py``: the same module and
words, without paying the start-up each time); any other command in bash. Paths a user replaces
(``/data/my_mri`` ...) point at small folders made from the embedded sample; commands whose data is the research data
``../shared/data`` skip when it is absent.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from python_command import run_module

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHARED = REPO.parent / "shared" / "data"
# one pytest-xdist worker runs the module: its module-scoped fixtures (a trained model, datalists) are made once
pytestmark = pytest.mark.xdist_group("docs_commands")
WATCHED = ("bundles", "data_lists", "weights", "sample_data", "notebooks", "docs")  # a documented run writes none
HANG_GUARD_S = 3600  # far above the idle time of any run here (<= 2 min): only a hang trips it

PRETRAIN_CHEAP = ("--epochs 1 --iterations_per_epoch 2 --batch_size 1 --validation_pairs 1 --warmup_iterations 1 "
                  "--patch_size '[32,32,32]' --context_size '[48,48,48]' --num_threads 1")  # fmt: skip
SEG_CHEAP = ("--epochs 1 --iterations_per_epoch 2 --batch_size 1 --samples_per_volume 1 --val_interval 1 "
             "--warmup_iterations 1 --patch_size '[32,32,32]' --cache_rate 0 --num_threads 1")  # fmt: skip


def documented_commands() -> dict[str, list[str]]:
    """Each command of the ``bash`` blocks of README.md and docs/*.md -> the pages showing it."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            for line in re.sub(r"\\\n\s*", "", block).splitlines():
                command = re.sub(r"\s+#\s.*$", "", line).strip()  # `--relloc#weight` is no comment
                if command and not command.startswith("#"):
                    found.setdefault(command, []).append(str(page.relative_to(REPO)))
    return found


def block_comment_after(command: str, page: str) -> str:
    """The comment line that follows ``command`` in ``page`` (what the docs say it prints)."""
    lines = (REPO / page).read_text(encoding="utf-8").splitlines()
    return lines[lines.index(command) + 1].lstrip("# ").strip()


def repository_files() -> set[str]:
    return {str(p.relative_to(REPO)) for folder in WATCHED for p in (REPO / folder).rglob("*") if p.is_file()}


@dataclass
class Workspace:
    """Temporary stand-ins for the folders a user names (``/data/...``, ``data_lists/my_*.json``)."""

    root: Path
    env: dict = field(default_factory=dict)

    def localise(self, command: str) -> str:
        command = re.sub(r"(?<![\w./])/data/", f"{self.root}/data/", command)  # not ../shared/data/
        return re.sub(r"(?<![\w/])data_lists/my_", f"{self.root}/data_lists/my_", command)

    def run(self, command: str, overrides: str = "", expect_ok: bool = True) -> subprocess.CompletedProcess:
        """``command`` (localised) with ``overrides`` appended, from the repository root; nothing in it may change.
        A plain ``python -m`` line runs in a fork of :mod:`python_command`'s zygote (the words bash would pass),
        any other line in bash."""
        before = repository_files()
        line = f"{self.localise(command)} {overrides}".strip()
        words = None if re.search(r"[|&;<>$`*?(){}~\\]", line) else shlex.split(line)
        if words and words[:2] == ["python", "-m"]:
            result = run_module(words[2], words[3:], cwd=REPO, env=self.env, timeout=HANG_GUARD_S)
        else:
            result = subprocess.run(["bash", "-c", line], cwd=REPO, env=self.env, capture_output=True, text=True,
                                    timeout=HANG_GUARD_S)  # fmt: skip
        output = result.stdout + result.stderr
        if expect_ok:
            assert result.returncode == 0, f"{line}\n{output[-4000:]}"
        assert repository_files() == before, f"{line} wrote into the repository: {repository_files() ^ before}"
        return result

    def folder(self, name: str) -> Path:
        path = self.root / "runs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def labelled_copy(image: Path, images: Path, labels: Path) -> None:
    """``image`` into ``images`` and a label of its brightest 30 % voxels (a stand-in structure) into ``labels``."""
    volume = nib.load(str(image))
    data = np.asarray(volume.dataobj, dtype=np.float32)
    label = (data > np.percentile(data, 70)).astype(np.uint8)
    shutil.copy(image, images / image.name)
    nib.save(nib.Nifti1Image(label, volume.affine), str(labels / image.name))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("user")
    data = root / "data"
    (root / "data_lists").mkdir()
    (data / "my_mri").mkdir(parents=True)
    (data / "my_images").mkdir()
    (data / "my_labels").mkdir()
    for name in ("stroke_flair", "stroke_t1", "stroke_t2", "fpg_t2"):
        shutil.copy(REPO / "sample_data" / "mri" / f"{name}.nii.gz", data / "my_mri")
    for name in ("stroke_flair", "stroke_t1", "stroke_t2", "seg3d_head_mr", "fpg_t2"):
        labelled_copy(REPO / "sample_data" / "mri" / f"{name}.nii.gz", data / "my_images", data / "my_labels")
    shutil.copy(REPO / "sample_data" / "mri" / "stroke_t2.nii.gz", data / "new_case.nii.gz")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` / `torchrun` of this interpreter
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": path, "OMP_NUM_THREADS": "1"}
    return Workspace(root, env)


def only(command_start: str) -> str:
    """The one documented command starting with ``command_start``."""
    (command,) = [c for c in documented_commands() if c.startswith(command_start)]
    return command


@pytest.fixture(scope="module")
def mri_datalist(workspace) -> Path:
    workspace.run(only("python -m cover3d.data.datalist /data/my_mri"))
    return workspace.root / "data_lists" / "my_mri.json"


@pytest.fixture(scope="module")
def seg_datalist(workspace) -> Path:
    workspace.run(only("python -m cover3d.data.datalist /data/my_images"))
    return workspace.root / "data_lists" / "my_seg.json"


def pretrain(workspace: Workspace, command: str, name: str, extra: str = "") -> Path:
    """Run a documented pretraining command cheaply into its own folder; the folder."""
    run = workspace.folder(name)
    workspace.run(command, f"{PRETRAIN_CHEAP} --ckpt_dir {run}/models --output_dir {run}/runs {extra}")
    assert (run / "models" / "model.pt").is_file() and (run / "models" / "metadata.json").is_file()
    return run


@pytest.fixture(scope="module")
def sample_run(workspace) -> Path:
    """The default ``cover_mri`` pretraining on the embedded sample (docs/bundles.md), cheaply."""
    return pretrain(workspace, "python -m monai.bundle run --config_file bundles/cover_mri/train.json", "sample")


@pytest.fixture(scope="module")
def seg_run(workspace, seg_datalist) -> Path:
    """The README's fine-tune of the shipped weights on a labelled folder, cheaply."""
    run = workspace.folder("seg")
    result = workspace.run(only("python -m monai.bundle run --config_file bundles/cover_seg/train.json --dataset_dir /data/my_images"),
                           f"{SEG_CHEAP} --ckpt_dir {run}/models --output_dir {run}/runs")  # fmt: skip
    assert "loaded 80 of 82 target tensors (100% of the backbone's)" in result.stdout + result.stderr
    assert (run / "models" / "model.pt").is_file()
    return run


# ---- how each command is tested: a function of (command, pytest request) ----------------------------------------


def needs_shared_data(*folders: str) -> None:
    missing = [f for f in folders if not (SHARED / f).is_dir()]
    if missing:
        pytest.skip(f"needs the research data ../shared/data/{missing[0]} (absent here)")


def pending(branch: str, ready: bool) -> None:
    """Skip until the entry point / option another branch adds is merged (the check runs by itself once it is)."""
    if not ready:
        pytest.skip(f"entry point from branch {branch} not merged yet")


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def options_in_help(command: str, request) -> None:
    """For a multi-hour protocol: every ``--option`` the command uses is one its ``--help`` lists, and every
    repository file it names exists."""
    workspace = request.getfixturevalue("workspace")
    words = shlex.split(command)
    program = words[: words.index("-m") + 2] if "-m" in words else words[:2]
    result = workspace.run(shlex.join(program) + " --help")
    used = {w for w in words if w.startswith("--")}
    listed = set(re.findall(r"--[\w-]+", result.stdout))
    assert used <= listed, f"{command}: options not in --help: {sorted(used - listed)}"
    named = [w for w in words if re.match(r"(data_lists|weights|bundles)/", w)]
    assert all((REPO / w).exists() for w in named), named


def protocol(module: str) -> Callable:
    def check(command: str, request) -> None:
        pending("protocols", module_exists(module))
        options_in_help(command, request)

    return check


def readme_command_1(command: str, request) -> None:
    # the install part is what command (2)'s fresh environment (.ci/run) tests; the pretraining runs here, cheaply
    assert command.endswith("pip install -e . && python -m monai.bundle run --config_file bundles/cover_ct/train.json")
    pretrain(request.getfixturevalue("workspace"), "python -m monai.bundle run --config_file bundles/cover_ct/train.json", "ct")


def readme_command_2(command: str, request) -> None:
    # command (2) is this test suite; .ci/run reads it from the line after "# 2. " and runs it verbatim
    ci = (REPO / ".ci" / "run").read_text()
    extracted = subprocess.run(["awk", r"/^# 2\. /{getline; print; exit}", "README.md"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    assert "awk '/^# 2\\. /{getline; print; exit}' README.md" in ci and extracted == command


def datalist_written(fixture: str, keys: tuple[str, ...]) -> Callable:
    def check(command: str, request) -> None:
        datalist = json.loads(request.getfixturevalue(fixture).read_text())
        assert all(datalist[key] for key in keys)
        if fixture == "seg_datalist":
            entry = datalist["training"][0]
            assert Path(entry["label"]).name == Path(entry["image"]).name

    return check


def pretrain_own_folder(command: str, request) -> None:
    request.getfixturevalue("mri_datalist")
    run = pretrain(request.getfixturevalue("workspace"), command, "own")
    metadata = json.loads((run / "models" / "metadata.json").read_text())
    assert metadata["preprocessing"]["spacing_mm"] == [2.0, 2.0, 2.0]


PREPARE_COMMAND = ("python -m cover3d.prepare --config_file bundles/cover_mri/train.json --dataset_dir /data/my_mri "
                   "--datalist data_lists/my_mri.json --store /data/my_mri_store")


@pytest.fixture(scope="module")
def mri_store(workspace, mri_datalist) -> Path:
    """The store that docs/performance.md's prepare command writes for the user's MRI folder."""
    workspace.run(PREPARE_COMMAND)
    return workspace.root / "data" / "my_mri_store"


def store_prepared(command: str, request) -> None:
    assert command == PREPARE_COMMAND
    store = request.getfixturevalue("mri_store")
    manifest = json.loads((store / "manifest.json").read_text())
    training = json.loads(request.getfixturevalue("mri_datalist").read_text())["training"]
    assert manifest["complete"] and len(manifest["entries"]) == len(training)
    assert manifest["settings"]["pixdim"] == [2.0, 2.0, 2.0]


def pretrain_from_store(command: str, request) -> None:
    request.getfixturevalue("mri_store")
    run = pretrain(request.getfixturevalue("workspace"), command, "store")
    assert (run / "models" / "checkpoint_2.pt").is_file()


def default_pretraining(command: str, request) -> None:
    run = request.getfixturevalue("sample_run")
    assert list((run / "runs").rglob("events.out.tfevents.*"))


def tensorboard(command: str, request) -> None:
    # the command starts a server; --inspect reads the same log folder and exits
    assert command == "tensorboard --logdir bundles/cover_mri/runs"
    runs = request.getfixturevalue("sample_run") / "runs"
    result = request.getfixturevalue("workspace").run(f"tensorboard --inspect --logdir {runs}")
    assert "epe" in result.stdout


def field_accuracy(command: str, request) -> None:
    run, workspace = request.getfixturevalue("sample_run"), request.getfixturevalue("workspace")
    workspace.run(command, f"--ckpt_dir {run}/models --eval_file {run}/field_accuracy.json --eval_pairs 1 --num_threads 1")
    accuracy = json.loads((run / "field_accuracy.json").read_text())
    assert set(accuracy) >= {"epe", "epe_identity"}


def runs_as_written(command: str, request) -> None:
    request.getfixturevalue("workspace").run(command)


def torchscript_export(command: str, request) -> None:
    workspace = request.getfixturevalue("workspace")
    target = workspace.folder("export") / "model.ts"
    workspace.run(command, f"--filepath {target} --input_shape '[1, 2, 32, 32, 32]'")  # a smaller trace: cheaper
    traced = torch.jit.load(str(target))
    assert traced(torch.rand(1, 2, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def dry_run(command: str, request) -> None:
    request.getfixturevalue("mri_datalist")
    result = request.getfixturevalue("workspace").run(command, "--dryrun_volumes 1 --dryrun_pairs 1 --dryrun_steps 1")
    assert "estimated peak memory" in result.stdout + result.stderr


def fine_tune_own_folder(command: str, request) -> None:
    assert (request.getfixturevalue("seg_run") / "models" / "model.pt").is_file()


def fine_tune_shared(command: str, request) -> None:
    needs_shared_data("la_mri_2018")
    workspace = request.getfixturevalue("workspace")
    pool = json.loads((REPO / "data_lists" / "la_mri_2018_pool.json").read_text())
    small = workspace.root / "la_small.json"
    small.write_text(json.dumps({"training": pool["training"][:2], "validation": pool["validation"][:1]}))
    run = workspace.folder("seg_la")
    result = workspace.run(command, f"{SEG_CHEAP} --datalist {small} --ckpt_dir {run}/models --output_dir {run}/runs")
    assert "100% of the backbone's" in result.stdout + result.stderr and (run / "models" / "model.pt").is_file()


def seg_evaluate(command: str, request) -> None:
    # the documented data is the research data; the run here evaluates the cheap fine-tune on the labelled folder
    run, workspace = request.getfixturevalue("seg_run"), request.getfixturevalue("workspace")
    datalist = json.loads(request.getfixturevalue("seg_datalist").read_text())
    test = workspace.root / "seg_test.json"
    test.write_text(json.dumps({"test": datalist["validation"]}))
    out = run / "eval"
    workspace.run(command, f"--dataset_dir {workspace.root}/data/my_images --datalist {test} --ckpt_dir {run}/models "
                           f"--output_dir {out} --patch_size '[32,32,32]'")  # fmt: skip
    rows = list(csv.reader((out / "dice_raw.csv").open()))
    assert len(rows) == 1 + len(datalist["validation"])


def seg_inference_one_volume(command: str, request) -> None:
    inference = json.loads((REPO / "bundles" / "cover_seg" / "inference.json").read_text())
    pending("tools", "image" in inference)
    run, workspace = request.getfixturevalue("seg_run"), request.getfixturevalue("workspace")
    image = Path(re.search(r"--image (\S+)", workspace.localise(command)).group(1))
    out = run / "predictions" / image.name  # one folder per documented command
    command = command.replace("bundles/cover_seg/models/model.pt", f"{run}/models/model.pt")
    workspace.run(command, f"--output_dir {out} --patch_size '[32,32,32]'")
    (prediction,) = out.glob("*.nii.gz")
    assert nib.load(str(prediction)).shape == nib.load(str(REPO / image)).shape  # REPO / an absolute path = that path


def field_export(command: str, request) -> None:
    workspace = request.getfixturevalue("workspace")
    out = workspace.folder("fields")
    workspace.run(command, f"--predictions_dir {out}")
    summary = json.loads((out / "stroke_flair_random0_summary.json").read_text())
    assert summary["epe"] < 0.5 * summary["epe_identity"]  # the shipped weights, not an untrained network
    assert summary["similarity"]["ncc_after"] > summary["similarity"]["ncc_before"]
    claim = re.search(r"EPE ([\d.]+) voxels\nagainst ([\d.]+) for the zero field", (REPO / "docs" / "fields.md").read_text())
    assert (summary["epe"], summary["epe_identity"]) == pytest.approx(tuple(map(float, claim.groups())), abs=0.05)
    (snippet,) = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "fields.md").read_text(), flags=re.S)
    namespace: dict = {}
    exec(snippet.replace("bundles/cover_mri/predictions", str(out)), namespace)  # noqa: S102 - the docs' own code
    warped, moving = namespace["warped"], namespace["moving"]
    assert warped.GetSize() == moving.GetSize() and warped.GetPixelIDValue() == moving.GetPixelIDValue()


def torchrun_two_processes(command: str, request) -> None:
    # 2 processes instead of 4 on this CPU; the same overlay and settings
    workspace = request.getfixturevalue("workspace")
    run = workspace.folder("ddp")
    command = command.replace("--nproc_per_node=4", "--nproc_per_node=2")
    overrides = PRETRAIN_CHEAP.replace("--batch_size 1 ", "")  # the command's own --batch_size 2 stays
    workspace.run(command, f"{overrides} --ckpt_dir {run}/models --output_dir {run}/runs")
    assert (run / "models" / "model.pt").is_file()


def notebook(command: str, request) -> None:
    # tests/test_notebook.py executes the notebook (nbclient, the kernel nbconvert uses); here: the extra has nbconvert
    assert "jupyter nbconvert --to notebook --execute notebooks/inspect_dvf.ipynb" in command
    extras = (REPO / "setup.cfg").read_text().split("notebook =")[1].split("test =")[0]
    assert "nbconvert" in extras.split()
    assert "def test_inspect_dvf_notebook_executes" in (REPO / "tests" / "test_notebook.py").read_text()


def overlay_pretraining(name: str, extra: str = "") -> Callable:
    def check(command: str, request) -> None:
        pretrain(request.getfixturevalue("workspace"), command, name, extra)

    return check


def one_line_error(command: str, request) -> None:
    page = documented_commands()[command][0]
    result = request.getfixturevalue("workspace").run(command, "--num_threads 1", expect_ok=False)
    assert result.returncode != 0
    last = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert last == block_comment_after(command, page).removeprefix("last line: ")


def covered_by(test: str) -> Callable:
    """A command another test runs (named ``tests/<file>.py::<test>``): that test exists."""

    def check(command: str, request) -> None:
        path, name = test.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), f"{command}: {test} is gone"

    return check


def nnunet_extra(command: str, request) -> None:
    assert "nnunet =" in (REPO / "setup.cfg").read_text() and (REPO / "constraints.txt").is_file()


def nnunet_backbone_pretraining(command: str, request) -> None:
    pytest.importorskip("dynamic_network_architectures", reason="needs the nnunet extra: pip install -e '.[nnunet]'")
    pretrain(request.getfixturevalue("workspace"), command, "nnunet")


COMMANDS: dict[str, Callable[[str, object], None]] = {
    # README.md
    'python -c "import torch" 2>/dev/null || pip install torch==2.13.0; pip install -e . && python -m monai.bundle run '
    "--config_file bundles/cover_ct/train.json": readme_command_1,
    'python -c "import torch" 2>/dev/null || pip install torch==2.13.0; pip install -e ".[test,nnunet]" -c constraints.txt '
    "&& python -m pytest -q":
        readme_command_2,
    "python -m cover3d.data.datalist /data/my_mri --output data_lists/my_mri.json --val-fraction 0.1 --check":
        datalist_written("mri_datalist", ("training", "validation")),
    "python -m monai.bundle run --config_file bundles/cover_mri/train.json --dataset_dir /data/my_mri --datalist "
    "data_lists/my_mri.json": pretrain_own_folder,
    "python -m cover3d.data.datalist /data/my_images --labels /data/my_labels --output data_lists/my_seg.json "
    "--val-fraction 0.2 --check": datalist_written("seg_datalist", ("training", "validation")),
    "python -m monai.bundle run --config_file bundles/cover_seg/train.json --dataset_dir /data/my_images --datalist "
    "data_lists/my_seg.json --pretrained_weights weights/cover_mri_pool_2mm/model.pt": fine_tune_own_folder,
    "python -m monai.bundle run --config_file bundles/cover_seg/inference.json --image /data/new_case.nii.gz --weights "
    "bundles/cover_seg/models/model.pt": seg_inference_one_volume,
    "python -m monai.bundle run --config_file \"['bundles/cover_mri/train.json','bundles/cover_mri/inference.json']\" "
    "--weights weights/cover_mri_pool_2mm/model.pt --image_a sample_data/mri/stroke_flair.nii.gz": field_export,
    "torchrun --nproc_per_node=4 -m monai.bundle run --config_file "
    "\"['bundles/cover_mri/train.json','bundles/cover_mri/multi_gpu_train.json']\" --batch_size 2": torchrun_two_processes,
    # docs/bundles.md
    "python -m monai.bundle run --config_file bundles/cover_mri/train.json": default_pretraining,
    "tensorboard --logdir bundles/cover_mri/runs": tensorboard,
    "python -m monai.bundle run --config_file \"['bundles/cover_mri/train.json','bundles/cover_mri/evaluate.json']\"":
        field_accuracy,
    "python -m monai.bundle verify_net_in_out network_def --config_file bundles/cover_mri/train.json --meta_file "
    "bundles/cover_mri/metadata.json": runs_as_written,
    "python -m monai.bundle ckpt_export network_def --config_file bundles/cover_mri/train.json --meta_file "
    "bundles/cover_mri/metadata.json --ckpt_file weights/cover_mri_pool_2mm/model.pt --filepath "
    "bundles/cover_mri/models/model.ts --use_trace True --input_shape \"[1, 2, 48, 48, 48]\"": torchscript_export,
    "python -m cover3d.dryrun --config_file bundles/cover_mri/train.json --dataset_dir /data/my_mri --datalist "
    "data_lists/my_mri.json --patch_size \"[64,64,64]\" --context_size \"[96,96,96]\"": dry_run,
    "python -m monai.bundle run --config_file bundles/cover_seg/train.json --dataset_dir ../shared/data/la_mri_2018 "
    "--datalist data_lists/la_mri_2018_pool.json --pretrained_weights weights/cover_mri_pool_2mm/model.pt": fine_tune_shared,
    "python -m monai.bundle run --config_file bundles/cover_seg/evaluate.json --dataset_dir ../shared/data/la_mri_2018 "
    "--datalist data_lists/la_mri_2018_test.json": seg_evaluate,
    "python -m monai.bundle run --config_file bundles/cover_seg/inference.json --image "
    "sample_data/mri/stroke_flair.nii.gz --weights bundles/cover_seg/models/model.pt": seg_inference_one_volume,
    # docs/evidence.md
    "python benchmarks/seg_convergence.py --name my_run --overlay bundles/cover_seg/converged.json --dataset-dir "
    "../shared/data/la_mri_2018 --pool data_lists/la_mri_2018_pool.json --test data_lists/la_mri_2018_test.json":
        options_in_help,
    "python benchmarks/acdc_baseline.py --dataset-dir ../shared/data/acdc_cardiac_mri": options_in_help,
    "python benchmarks/pretraining_length.py --stages keep snapshots field finetune probe curve": options_in_help,
    "python -m cover3d.protocols.label_efficiency --dataset-dir ../shared/data/acdc_cardiac_mri --pool "
    "data_lists/acdc_pool.json --test data_lists/acdc_test.json --overlay bundles/cover_seg/acdc.json --sizes 4 8 16 all "
    "--modes scratch --output benchmarks/results/label_efficiency_acdc_native": protocol("cover3d.protocols.label_efficiency"),
    "python -m cover3d.protocols.label_efficiency --dataset-dir ../shared/data/la_mri_2018 --pool "
    "data_lists/la_mri_2018_pool.json --test data_lists/la_mri_2018_test.json --pretrained-weights "
    "weights/cover_mri_pool_2mm/model.pt --modes pretrained --sizes 2 4 8 16 all --output "
    "benchmarks/results/label_efficiency_la": protocol("cover3d.protocols.label_efficiency"),
    "python -m cover3d.protocols.label_efficiency --dataset-dir ../shared/data/acdc_cardiac_mri --pool "
    "data_lists/acdc_pool.json --test data_lists/acdc_test.json --pretrained-weights weights/cover_mri_pool_2mm/model.pt "
    "--set num_classes=4 --epochs 48 --sizes 2 4 8 16 all --modes scratch pretrained probe --output "
    "benchmarks/results/label_efficiency_acdc_2400its": protocol("cover3d.protocols.label_efficiency"),
    "python -m cover3d.protocols.feature_probe --name untrained_seed0 --init-seed 0 --dataset-dir "
    "../shared/data/la_mri_2018 --pool data_lists/la_mri_2018_pool.json --test data_lists/la_mri_2018_test.json "
    "--n-labelled 2 4 8 all --output benchmarks/results/feature_probe": protocol("cover3d.protocols.feature_probe"),
    "python -m cover3d.protocols.feature_probe --name cover_mri_pool_2mm --weights weights/cover_mri_pool_2mm/model.pt "
    "--dataset-dir ../shared/data/la_mri_2018 --pool data_lists/la_mri_2018_pool.json --test "
    "data_lists/la_mri_2018_test.json --n-labelled 2 4 8 all --output benchmarks/results/feature_probe":
        protocol("cover3d.protocols.feature_probe"),
    "python -m cover3d.protocols.feature_probe --report benchmarks/results/feature_probe/*.json":
        protocol("cover3d.protocols.feature_probe"),
    "python -m cover3d.protocols.pretext_comparison --pretrain-dataset-dir ../shared/data --pretrain-datalist "
    "data_lists/mri_pretraining_pool.json --dataset-dir ../shared/data/la_mri_2018 --pool data_lists/la_mri_2018_pool.json "
    "--test data_lists/la_mri_2018_test.json --output benchmarks/results/pretext_comparison":
        protocol("cover3d.protocols.pretext_comparison"),
    # docs/fields.md
    'pip install -e ".[notebook]" && jupyter nbconvert --to notebook --execute notebooks/inspect_dvf.ipynb --output-dir /tmp':
        notebook,
    # docs/method.md
    "python -m monai.bundle run --config_file \"['bundles/cover_mri/train.json','bundles/cover_mri/pretext_relloc.json']\" "
    "--relloc#weight 0.5": overlay_pretraining("relloc"),
    "python -m monai.bundle run --config_file \"['bundles/cover_mri/train.json','bundles/cover_mri/pseudo_fields.json']\" "
    "--pseudo#teacher_weights weights/cover_mri_pool_2mm/model.pt --ckpt_dir bundles/cover_mri/models_round1":
        overlay_pretraining("pseudo", "--pseudo#pairs 1"),
    # docs/nnunet.md (steps 2-4 need nnU-Net's own tools and a dataset; tests/test_nnunet.py runs them on synthetic data)
    'pip install -e ".[nnunet]" -c constraints.txt': nnunet_extra,
    "python -m monai.bundle run --config_file \"['bundles/cover_mri/train.json','bundles/cover_mri/backbone_nnunet.json']\"":
        nnunet_backbone_pretraining,
    "export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...":
        covered_by("tests/test_nnunet.py::test_nnunet_fine_tunes_from_the_exported_weights"),
    "nnUNetv2_plan_and_preprocess -d 501 --no_pp":
        covered_by("tests/test_nnunet.py::test_nnunet_fine_tunes_from_the_exported_weights"),
    "python -m cover3d.export --format nnunet --weights bundles/cover_mri/models/model.pt --plans "
    "$nnUNet_preprocessed/Dataset501_X/nnUNetPlans.json --out $nnUNet_preprocessed/Dataset501_X":
        covered_by("tests/test_nnunet.py::test_nnunet_fine_tunes_from_the_exported_weights"),
    "nnUNetv2_preprocess -d 501 -plans_name nnUNetPlans_cover3d -c 3d_fullres":
        covered_by("tests/test_nnunet.py::test_nnunet_fine_tunes_from_the_exported_weights"),
    "nnUNetv2_train 501 3d_fullres 0 -p nnUNetPlans_cover3d -pretrained_weights "
    "$nnUNet_preprocessed/Dataset501_X/nnUNetPlans_cover3d_pretrained.pt":
        covered_by("tests/test_nnunet.py::test_nnunet_fine_tunes_from_the_exported_weights"),
    "nnUNetv2_train 501 3d_fullres 0 -p nnUNetPlans_cover3d":
        covered_by("tests/test_nnunet.py::test_nnunet_fine_tunes_from_the_exported_weights"),
    # docs/performance.md
    PREPARE_COMMAND: store_prepared,
    "python -m monai.bundle run --config_file bundles/cover_mri/train.json --dataset_dir /data/my_mri --datalist "
    "data_lists/my_mri.json --store /data/my_mri_store": pretrain_from_store,
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0.example.org:29400 --rdzv_id "
    "cover_ct_run1 -m monai.bundle run --config_file \"['bundles/cover_ct/train.json','bundles/cover_ct/multi_gpu_train.json']\" "
    "--store /shared/cover_ct_store --batch_size 2": covered_by("tests/test_multinode.py::test_two_nodes_draw_different_samples_and_write_one_checkpoint_set"),
    # (an 8-minute CUDA run; on a CPU it prints one line; its smoke mode runs its code paths)
    "python benchmarks/gpu_check.py": covered_by("tests/test_gpu_check.py::test_smoke_mode_runs_every_part_on_the_cpu"),
    # docs/troubleshooting.md
    "python -m monai.bundle run --config_file bundles/cover_mri/train.json --resume false": one_line_error,
}


def test_every_documented_command_is_tested_and_every_entry_is_documented():
    documented = set(documented_commands())
    assert not documented - set(COMMANDS), f"commands in the docs that no test runs: {sorted(documented - set(COMMANDS))}"
    assert not set(COMMANDS) - documented, f"entries whose command left the docs: {sorted(set(COMMANDS) - documented)}"


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS), ids=[f"cmd{i}" for i in range(len(COMMANDS))])
def test_documented_command(command, request):
    COMMANDS[command](command, request)
