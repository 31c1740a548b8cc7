"""The pretraining bundles run as users run them: the bundle command, resume, evaluation, verify/export, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cover3d.engine import locate_bundle
from cover3d.networks import CoverNet

REPO = Path(__file__).resolve().parents[1]
NET = ["--channels", "[4,8,8,16,16]", "--groups", "[2,2,2,1,1]"]
TINY = ["--iterations_per_epoch", "2", "--batch_size", "1", "--validation_pairs", "1", "--log_interval", "1",
        "--warmup_iterations", "2", "--learning_rate", "0.01",
        "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]", *NET]  # fmt: skip


def bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
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


@pytest.mark.slow
def test_short_pretraining_beats_the_zero_field_on_fresh_pairs(trained_ct_weights, tmp_path):
    """evaluate.json on the weights of a real (short) run: its field error is clearly below the zero field's."""
    config = REPO / "bundles" / "cover_ct"
    configs = f"['{config / 'train.json'}','{config / 'evaluate.json'}']"
    bundle("run", "--config_file", configs, "--weights", str(trained_ct_weights), "--eval_pairs", "4",
           "--eval_file", str(tmp_path / "eval.json"), "--ckpt_dir", str(tmp_path), cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["pairs"] == 4 and report["epe"] < 0.8 * report["epe_identity"], report


def write_volume(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path.name


def bad_inputs(folder: Path) -> dict[str, tuple[list, str]]:
    """name -> (training entries, text the error must contain)"""
    good = write_volume(folder / "good.nii.gz", np.random.rand(40, 40, 40).astype(np.float32) * 1000)
    flat = write_volume(folder / "slice2d.nii.gz", np.random.rand(40, 40).astype(np.float32))
    series = write_volume(folder / "series4d.nii.gz", np.random.rand(40, 40, 40, 3).astype(np.float32))
    nan = np.random.rand(40, 40, 40).astype(np.float32)
    nan[3, 4, 5] = np.nan
    nans = write_volume(folder / "with_nan.nii.gz", nan)
    (folder / "garbage.nii.gz").write_bytes(b"not an image at all")
    return {
        "2d": ([{"image": good}, {"image": flat}], "slice2d.nii.gz"),
        "4d": ([{"image": series}], "series4d.nii.gz"),
        "nan": ([{"image": nans}], "with_nan.nii.gz"),
        "missing": ([{"image": good}, {"image": "absent.nii.gz"}], "absent.nii.gz"),
        "unreadable": ([{"image": "garbage.nii.gz"}], "garbage.nii.gz"),
        "empty": ([], "'training'"),
    }


@pytest.mark.parametrize("case", ["2d", "4d", "nan", "missing", "unreadable", "empty"])
def test_bad_input_fails_before_training_with_the_file_named(case, tmp_path):
    from monai.bundle import run

    entries, expected = bad_inputs(tmp_path)[case]
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": entries, "validation": entries or [{"image": "good.nii.gz"}]}))
    with pytest.raises(Exception) as caught:
        run(
            config_file=str(REPO / "bundles" / "cover_ct" / "train.json"),
            dataset_dir=str(tmp_path), datalist=str(datalist), ckpt_dir=str(tmp_path / "models"),
            output_dir=str(tmp_path / "runs"), **{"epochs": 1, "iterations_per_epoch": 1},
        )  # fmt: skip
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    message = "\n".join(chain)
    assert expected in message
    if case == "empty":
        assert "list.json" in message
    assert not (tmp_path / "models" / "model.pt").exists()  # nothing trained
