"""The pretraining bundles run as users run them: the bundle command, resume, evaluation, verify/export, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cover3d.engine import locate_bundle
from cover3d.networks import CoverNet
from python_command import run_module

REPO = Path(__file__).resolve().parents[1]
NET = ["--channels", "[4,8,8,16,16]", "--groups", "[2,2,2,1,1]"]
TINY = ["--iterations_per_epoch", "2", "--batch_size", "1", "--validation_pairs", "1", "--log_interval", "1",
        "--warmup_iterations", "2", "--learning_rate", "0.01",
        "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]", *NET]  # fmt: skip


def bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = run_module("monai.bundle", args, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_locate_bundle_follows_the_config_file(tmp_path):
    copied = tmp_path / "cover_ct"
    assert locate_bundle("cover_ct", ["x", "--config_file", str(copied / "train.json")]) == str(copied)
    listed = f"['{copied / 'train.json'}', 'other.json']"
    assert locate_bundle("cover_ct", ["x", f"--config_file={listed}"]) == str(copied)
    assert locate_bundle("cover_ct", ["x"]) == str(REPO / "bundles" / "cover_ct")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cover_ct", "cover_mri"])
def test_bundle_trains_resumes_evaluates_and_exports(name, tmp_path):
    config = str(REPO / "bundles" / name / "train.json")
    outputs = ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs")]
    first = bundle("run", "--config_file", config, "--epochs", "1", *TINY, *outputs, cwd=tmp_path)  # run from another folder
    log = first.stdout + first.stderr
    for term in ("loss_vec", "loss_con", "epe", "epe_identity", "it_per_s", "val_epe"):
        assert term in log
    lrs = [float(line.split("lr: ")[1].split()[0]) for line in log.splitlines() if "lr: " in line]
    assert lrs == [0.0, 0.005]  # the warm-up schedule really applies, per iteration
    weights = tmp_path / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    assert any(k.startswith("backbone.") for k in state)
    assert (tmp_path / "models" / "checkpoint_2.pt").is_file()  # named by iterations done
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))

    # a second run with one more epoch resumes from checkpoint_2 instead of starting over, on the 2-epoch schedule
    second = bundle("run", "--config_file", config, "--epochs", "2", *TINY, *outputs, cwd=tmp_path)
    log = second.stdout + second.stderr
    assert f"resuming from {tmp_path / 'models' / 'checkpoint_2.pt'}: iteration 2 of 4" in log
    assert "Engine run resuming from iteration 2, epoch 1" in log
    lrs = [float(line.split("lr: ")[1].split()[0]) for line in log.splitlines() if "lr: " in line]
    assert lrs == [0.01, 0.005]  # iterations 3 and 4 of the 4-iteration schedule, no warm-up restart
    assert {p.name for p in (tmp_path / "models").glob("checkpoint_*.pt")} == {"checkpoint_2.pt", "checkpoint_4.pt"}

    configs = f"['{config}','{REPO / 'bundles' / name / 'evaluate.json'}']"
    bundle("run", "--config_file", configs, *TINY, *outputs, "--eval_pairs", "2",
           "--eval_file", str(tmp_path / "eval.json"), cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["pairs"] == 2 and set(report) == {"epe", "epe_identity", "pairs"}

    meta = str(REPO / "bundles" / name / "metadata.json")
    net_args = ["--config_file", config, "--meta_file", meta, *NET]
    bundle("verify_net_in_out", "network_def", *net_args, cwd=tmp_path)
    exported = tmp_path / "model.ts"
    bundle("ckpt_export", "network_def", *net_args, "--ckpt_file", str(weights), "--filepath", str(exported),
           "--use_trace", "True", "--input_shape", "[1, 2, 32, 32, 32]", cwd=tmp_path)  # fmt: skip
    scripted = torch.jit.load(str(exported))
    radii = json.loads(Path(config).read_text())["radii"]  # the bundle's own setting, not a copy of it
    net = CoverNet(channels=(4, 8, 8, 16, 16), radii=radii, groups=(2, 2, 2, 1, 1))
    net.load_state_dict(torch.load(weights, weights_only=True))  # the weights of the resumed run, as exported
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net.eval()(x), atol=1e-4)


# the bundle's widths on 32^3 patches of 4 mm voxels (the evaluation uses the same), 240 iterations: 2.8 min of CPU
# for training and evaluation (170 s measured), where the default 48^3 at 2.5 mm for 160 iterations takes about 6.
# Measured epe / epe_identity with --seed 0, 1, 2: 0.65, 0.65, 0.81 (the test runs seed 0, the bundle's default);
# 120 iterations: 0.69, 0.84, 0.97; 60 iterations (seed 0): 0.83-0.88; smaller widths (seed 0, 60 iterations):
# 4..16 at 2.5 mm 1.13, 8..32 at 4 mm 0.88
SHORT_RUN_GEOMETRY = ["--pixdim", "[4.0,4.0,4.0]", "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]"]
SHORT_RUN = ["--epochs", "1", "--iterations_per_epoch", "240", "--learning_rate", "0.004", "--warmup_iterations", "10",
             "--validation_pairs", "1", *SHORT_RUN_GEOMETRY]  # fmt: skip


@pytest.mark.slow
def test_short_pretraining_beats_the_zero_field_on_fresh_pairs(tmp_path):
    """A short real cover_ct run, then evaluate.json on its weights: on 4 pairs drawn with the evaluation's own seed
    the field error is clearly below the zero field's."""
    config = REPO / "bundles" / "cover_ct"
    models = tmp_path / "models"
    bundle("run", "--config_file", str(config / "train.json"), *SHORT_RUN, "--ckpt_dir", str(models),
           "--output_dir", str(tmp_path / "runs"), cwd=tmp_path)  # fmt: skip
    configs = f"['{config / 'train.json'}','{config / 'evaluate.json'}']"  # evaluates the run's own model.pt
    bundle("run", "--config_file", configs, *SHORT_RUN_GEOMETRY, "--ckpt_dir", str(models), "--eval_pairs", "4",
           "--eval_file", str(tmp_path / "eval.json"), cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["pairs"] == 4 and report["epe"] < 0.8 * report["epe_identity"], report


def write_volume(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path.name


def bad_inputs(folder: Path) -> dict[str, tuple[list, list | None, dict, str]]:
    """name -> (training entries, validation entries (None: a good one), overrides, the one-line message's text)"""
    size = (64, 64, 64)  # 128 mm: 51 voxels at the CT bundle's 2.5 mm, more than its 48^3 patch
    good = write_volume(folder / "good.nii.gz", np.random.rand(*size).astype(np.float32) * 1000)
    flat = write_volume(folder / "slice2d.nii.gz", np.random.rand(64, 64).astype(np.float32))
    series = write_volume(folder / "series4d.nii.gz", np.random.rand(*size, 3).astype(np.float32))
    nan = np.random.rand(*size).astype(np.float32)
    nan[3, 4, 5] = np.nan
    nans = write_volume(folder / "with_nan.nii.gz", nan)
    constant = write_volume(folder / "constant.nii.gz", np.zeros(size, np.float32))
    small = write_volume(folder / "small.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
    (folder / "garbage.nii.gz").write_bytes(b"not an image at all")
    return {
        "2d": ([{"image": good}, {"image": flat}], None, {}, "slice2d.nii.gz: has 2 spatial dimensions, expected 3"),
        "4d": ([{"image": series}], None, {}, "series4d.nii.gz: has 3 channels, expected 1"),
        "nan": ([{"image": nans}], None, {}, "with_nan.nii.gz: has 1 non-finite (NaN/Inf) values"),
        "constant": ([{"image": constant}], None, {}, "constant.nii.gz: is constant"),
        "missing": ([{"image": good}, {"image": "absent.nii.gz"}], None, {}, "absent.nii.gz ('image' of entry 1)"),
        "unreadable": ([{"image": "garbage.nii.gz"}], None, {}, "garbage.nii.gz: unreadable"),
        "empty": ([], None, {}, "'training' must be a non-empty list"),
        "small": ([{"image": small}], None, {}, "small.nii.gz: much smaller than the training patch: [6, 6, 6] voxels"),
        "patch": ([{"image": good}], None, {"patch_size": [40, 48, 48], "context_size": [72, 72, 72]},
                  "patch_size [40, 48, 48] is not divisible by 16"),
        "in both lists": ([{"image": nans}], [{"image": nans}], {}, "with_nan.nii.gz: has 1 non-finite"),
    }


CASES = ["2d", "4d", "nan", "constant", "missing", "unreadable", "empty", "small", "patch", "in both lists"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_before_training_with_one_message_naming_the_file(case, tmp_path, capsys):
    """Every bad input of the pre-flight list stops the run before training; what the user sees (cover3d's
    excepthook on MONAI's wrapped exception) ends with its one-line message, given once, without a traceback."""
    from monai.bundle import run

    from cover3d.errors import excepthook

    entries, validation, overrides, expected = bad_inputs(tmp_path)[case]
    datalist = tmp_path / "list.json"
    validation = validation if validation is not None else [{"image": "good.nii.gz"}]
    datalist.write_text(json.dumps({"training": entries, "validation": validation}))
    with pytest.raises(Exception) as caught:
        run(
            config_file=str(REPO / "bundles" / "cover_ct" / "train.json"),
            dataset_dir=str(tmp_path), datalist=str(datalist), ckpt_dir=str(tmp_path / "models"),
            output_dir=str(tmp_path / "runs"), **{"epochs": 1, "iterations_per_epoch": 1, **overrides},
        )  # fmt: skip
    assert not (tmp_path / "models" / "model.pt").exists()  # nothing trained
    capsys.readouterr()
    excepthook(type(caught.value), caught.value, caught.value.__traceback__)
    shown = capsys.readouterr().err.strip().splitlines()
    assert expected in shown[-1] and "Traceback" not in "\n".join(shown) and len(shown) == 2, shown
    assert sum(line.count(expected) for line in shown) == 1
    if case in ("empty", "missing"):
        assert "list.json" in shown[-1]


def test_bundle_command_ends_with_the_message_and_shows_the_traceback_on_request(tmp_path):
    entries, _, _, expected = bad_inputs(tmp_path)["small"]
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": entries, "validation": [{"image": "good.nii.gz"}]}))
    config = str(REPO / "bundles" / "cover_ct" / "train.json")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(tmp_path),
               "--datalist", str(datalist), "--ckpt_dir", str(tmp_path / "models")]  # fmt: skip
    for show_traceback in ("", "1"):
        env = {**os.environ, "COVER3D_TRACEBACK": show_traceback, "PYTHONPATH": str(REPO)}
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert result.returncode == 1
        if show_traceback:
            assert "Traceback" in result.stderr and "Failed to evaluate ConfigExpression" in result.stderr
        else:
            lines = result.stderr.strip().splitlines()
            assert expected in lines[-1] and "COVER3D_TRACEBACK=1" in lines[-2], result.stderr[-2000:]
            assert "Traceback" not in result.stderr and "ConfigExpression" not in result.stderr
