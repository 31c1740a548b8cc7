"""Segmentation network and the cover_seg bundle: train (with pretrained weights, resumed), evaluate, infer."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cover3d.networks.nets.cover import CoverNet
from cover3d.networks.nets.segmentation import CoverSegNet
from python_command import run_module

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "cover_seg"
SHARED = Path(os.environ.get("COVER3D_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY_CHANNELS = [4, 8, 8, 16, 16]
# geometry of the synthetic volumes: anisotropic voxels, x axis flipped, shifted origin (so inversion is tested)
AFFINE = np.array([[-1.6, 0, 0, 30.0], [0, 1.8, 0, -20.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])


def make_synthetic_dataset(folder: Path, cases: int, shape=(40, 36, 20), seed: int = 0) -> list[dict[str, str]]:
    """Write ``cases`` noisy images with a bright ellipsoid and its label (NIfTI, ``AFFINE``); return entries."""
    rng = np.random.default_rng(seed)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    entries = []
    for case in range(cases):
        centre = rng.uniform(0.35, 0.65, 3) * np.array(shape)
        radii = rng.uniform(0.15, 0.25, 3) * np.array(shape)
        label = (((grid - centre) / radii) ** 2).sum(-1) <= 1.0
        image = 50.0 + 10.0 * grid[..., 0] / shape[0] + 100.0 * label + rng.normal(0.0, 5.0, shape)
        name = f"case_{case:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), AFFINE), folder / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label.astype(np.uint8), AFFINE), folder / "labelsTr" / name)
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    return entries


def make_pool_and_test_lists(folder: Path, cases: int) -> None:
    """Synthetic cases in ``folder`` with ``pool.json`` (training: the first 2, validation: the 3rd) and ``test.json``
    (the rest), as the label-efficiency, probe and convergence benchmarks read them."""
    entries = make_synthetic_dataset(folder, cases=cases)
    (folder / "pool.json").write_text(json.dumps({"training": entries[:2], "validation": entries[2:3]}))
    (folder / "test.json").write_text(json.dumps({"test": entries[3:]}))


def copy_bundle(destination: Path) -> Path:
    """The cover_seg bundle files in ``destination/cover_seg`` (a run's outputs then land there, not in the repo)."""
    target = destination / "cover_seg"
    target.mkdir(parents=True)
    for path in [*BUNDLE.glob("*.json"), BUNDLE / "logging.conf"]:
        shutil.copy(path, target / path.name)
    return target


def run_bundle(config: Path, cwd: Path, *overrides: str) -> str:
    """``python -m monai.bundle run`` as a user runs it; returns stdout+stderr, fails the test on a non-zero exit."""
    result = run_module("monai.bundle", ["run", "--config_file", str(config), *overrides], cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


TINY = ["--pixdim", "[2.0,2.0,2.0]", "--patch_size", "[32,32,16]", "--channels", str(TINY_CHANNELS).replace(" ", "")]


def test_segnet_shapes_and_frozen_backbone():
    network = CoverSegNet(2, 3, TINY_CHANNELS, freeze_backbone=True)
    assert all(not p.requires_grad for p in network.backbone.parameters())
    assert all(p.requires_grad for p in network.head.parameters())
    logits = network(torch.rand(1, 2, 16, 32, 16))
    assert logits.shape == (1, 3, 16, 32, 16)
    logits.mean().backward()
    assert network.head.weight.grad is not None
    assert all(p.grad is None for p in network.backbone.parameters())
    # fine-tuning: pretrained backbone weights get non-zero gradients and one optimizer step changes them
    torch.manual_seed(0)
    trainable = CoverSegNet(1, 2, TINY_CHANNELS)
    trainable.backbone.load_state_dict(CoverNet(1, TINY_CHANNELS).backbone.state_dict())
    before = {k: v.clone() for k, v in trainable.backbone.state_dict().items()}
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.1)
    label = (torch.rand(1, 16, 16, 16) > 0.5).long()
    torch.nn.functional.cross_entropy(trainable(torch.rand(1, 1, 16, 16, 16)), label).backward()
    first, last = trainable.backbone.conv_0.conv_0.conv.weight, next(reversed(list(trainable.backbone.parameters())))
    assert first.grad.norm() > 0 and last.grad.norm() > 0
    optimizer.step()
    after = trainable.backbone.state_dict()
    changed = [k for k, v in after.items() if v.is_floating_point() and not v.equal(before[k])]
    weights = [k for k, v in before.items() if k.endswith("weight")]
    assert set(weights) <= set(changed), sorted(set(weights) - set(changed))


def test_backbone_learning_rate_scale_reaches_the_bundles_optimizer():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser.update({"channels": list(TINY_CHANNELS), "learning_rate": 0.01, "backbone_lr_scale": 0.1, "device": "cpu"})
    optimizer = parser.get_parsed_content("optimizer")
    network = parser.get_parsed_content("network")
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == pytest.approx(0.001) and head["lr"] == 0.01
    assert len(backbone["params"]) == len(list(network.backbone.parameters())) and len(head["params"]) == 2
    frozen = CoverSegNet(1, 2, TINY_CHANNELS, freeze_backbone=True).parameter_groups(0.01, 0.1)
    assert [len(g["params"]) for g in frozen] == [2]  # frozen backbone: the head alone


def test_bundle_configs_agree():
    """The three configs define the network, preprocessing and data settings identically."""
    names = ("train.json", "evaluate.json", "inference.json")
    configs = {name: json.loads((BUNDLE / name).read_text()) for name in names}
    shared = ("bundle_root", "ckpt_dir", "dataset_dir", "device", "amp", "modality", "pixdim", "preprocessing_args",
              "in_channels", "num_classes", "channels", "patch_size", "infer_roi_size", "sw_overlap", "network")
    for key in shared:
        values = {name: config[key] for name, config in configs.items()}
        assert len({json.dumps(v) for v in values.values()}) == 1, f"{key} differs: {values}"
    network_defs = [{k: v for k, v in c["network_def"].items() if k != "freeze_backbone"} for c in configs.values()]
    assert all(d == network_defs[0] for d in network_defs)
    image_only = [c["preprocessing"] for name, c in configs.items() if name != "train.json"]
    assert image_only[0] == image_only[1] == configs["train.json"]["preprocessing"].replace("label_keys='label', ", "")


@pytest.mark.parametrize("name", ["cover_ct", "cover_mri", "cover_seg"])
def test_metadata_follows_the_bundle_spec(name):
    """No deprecated key (MONAI warns on every run), and the segmentation output is what the network returns: 2-channel
    logits, on every axis a multiple of 16 (the default patch 48 x 48 x 32 is not cubic). MONAI's ``verify_metadata``
    needs the schema it downloads (no copy ships with MONAI 1.6.1), so the fixed fields are checked here."""
    import warnings

    from monai.bundle import ConfigParser

    path = REPO / "bundles" / name / "metadata.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = ConfigParser()
        parser.read_meta(str(path))
        meta = parser.get_parsed_content("_meta_")
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    assert "optional_packages_version" not in meta and "nibabel" in meta["required_packages_version"]
    if name == "cover_seg":
        image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
        assert pred["format"] == "logits" and pred["num_channels"] == len(pred["channel_def"]) == 2
        assert image["spatial_shape"] == pred["spatial_shape"] == ["16*n", "16*n", "16*p"]


@pytest.mark.slow
def test_verify_and_torchscript_export_by_trace(tmp_path):
    """The documented commands: verify_net_in_out, and ckpt_export with --use_trace (the networks are not scriptable:
    torch.jit.script fails on the backbone's Python-side shape check); the traced network equals the eager one on
    the traced shape and on another one."""
    weights = tmp_path / "model.pt"
    torch.manual_seed(0)
    network = CoverSegNet(1, 2, TINY_CHANNELS).eval()
    torch.save(network.state_dict(), weights)
    common = ["--config_file", str(BUNDLE / "inference.json"), "--meta_file", str(BUNDLE / "metadata.json"),
              "--channels", str(TINY_CHANNELS).replace(" ", "")]  # fmt: skip
    export = ["ckpt_export", "network_def", *common, "--ckpt_file", str(weights), "--filepath",
              str(tmp_path / "model.ts"), "--use_trace", "True", "--input_shape", "[1, 1, 48, 48, 32]"]  # fmt: skip
    for command in (["verify_net_in_out", "network_def", *common], export):
        result = run_module("monai.bundle", command, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    for shape in ((1, 1, 48, 48, 32), (1, 1, 32, 64, 16)):
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), network(x))


@pytest.mark.slow
def test_train_resume_evaluate_infer(tmp_path):
    """Train 1 epoch from pretrained weights, resume to 2 epochs, evaluate, infer NIfTI in the input's geometry;
    run from another working directory, outputs land in the bundle folder."""
    data = tmp_path / "data"
    entries = make_synthetic_dataset(data, cases=4)
    datalist = {"training": entries[:2], "validation": entries[2:3], "test": entries[3:]}
    (data / "datalist.json").write_text(json.dumps(datalist))
    bundle = copy_bundle(tmp_path / "bundles")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    weights = tmp_path / "pretrained.pt"
    torch.manual_seed(0)  # the same initial weights whichever tests ran before in this process
    torch.save({"module." + k: v for k, v in CoverNet(1, TINY_CHANNELS).state_dict().items()}, weights)
    common = ["--dataset_dir", str(data), "--datalist", str(data / "datalist.json"), *TINY]
    train = [*common, "--iterations_per_epoch", "2", "--val_interval", "1", "--batch_size", "1",
             "--samples_per_volume", "1", "--learning_rate", "0.003", "--pretrained_weights", str(weights)]

    log = run_bundle(bundle / "train.json", elsewhere, *train, "--epochs", "1")
    assert re.search(r"loaded \d+ of \d+ target tensors \(100% of the backbone's\)", log), log[-3000:]
    models = bundle / "models"
    assert {"checkpoint_2.pt", "model.pt", "model.json", "model_final.pt"} <= {p.name for p in models.iterdir()}
    assert json.loads((models / "model.json").read_text())["epoch"] == 1
    assert list((bundle / "runs").iterdir()), "no TensorBoard event files"
    assert not (elsewhere / "models").exists()

    log = run_bundle(bundle / "train.json", elsewhere, *train, "--epochs", "12")  # resumed, on the 12-epoch schedule
    assert f"resuming from {models / 'checkpoint_2.pt'}: iteration 2 of 24" in log
    assert "Epoch: 1/12" not in log and "Epoch: 2/12" in log
    assert {p.name for p in models.glob("checkpoint_*.pt")} == {"checkpoint_22.pt", "checkpoint_24.pt"}  # last two
    assert json.loads((models / "model.json").read_text())["epoch"] > 1  # the best model is a trained one

    run_bundle(bundle / "evaluate.json", elsewhere, *common, "--eval_key", "test")
    with open(bundle / "eval" / "metrics.csv", newline="") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f)}
    assert set(metrics) == {"dice", "hd95_mm"}
    assert metrics["dice"] > 0.8 and metrics["hd95_mm"] < 5.0, metrics  # 24 iterations learn the bright ellipsoid
    with open(bundle / "eval" / "dice_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["filename"]).name for r in rows] == ["case_003.nii.gz"]

    run_bundle(bundle / "inference.json", elsewhere, *common, "--infer_key", "test")
    prediction = nib.load(bundle / "eval" / "predictions" / "case_003_seg.nii.gz")
    image = nib.load(data / "imagesTr" / "case_003.nii.gz")
    assert prediction.shape == image.shape
    np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-4)
    assert prediction.get_data_dtype() == np.uint8
    predicted = np.asarray(prediction.dataobj)
    assert set(np.unique(predicted)) <= {0, 1}
    truth = np.asarray(nib.load(data / "labelsTr" / "case_003.nii.gz").dataobj) > 0
    dice = 2 * np.logical_and(predicted > 0, truth).sum() / ((predicted > 0).sum() + truth.sum())
    assert dice == pytest.approx(metrics["dice"], abs=1e-3)  # evaluation and inference agree on the label's grid


@pytest.mark.slow
def test_inference_on_one_volume_logs_what_it_loads_and_writes_and_never_overwrites(tmp_path):
    """--image segments one volume (no datalist); the log names the weights and the written file; a second run into
    the same folder is refused in one last line and leaves the file as it was; --overwrite True replaces it."""
    image = REPO / "sample_data" / "mri" / "stroke_flair.nii.gz"
    weights = tmp_path / "model.pt"
    torch.save(CoverSegNet(1, 2, TINY_CHANNELS).state_dict(), weights)
    out = tmp_path / "out"
    args = ["--image", str(image), "--weights", str(weights), "--output_dir", str(out), *TINY]
    log = run_bundle(BUNDLE / "inference.json", tmp_path, *args)
    written = out / "stroke_flair_seg.nii.gz"
    assert f"loaded weights {weights}" in log and f"wrote {written}" in log, log[-3000:]
    prediction, source = nib.load(written), nib.load(image)
    assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine, atol=1e-4)
    assert [p.name for p in out.iterdir()] == [written.name]

    before = written.stat().st_mtime_ns
    refused = run_module("monai.bundle", ["run", "--config_file", str(BUNDLE / "inference.json"), *args], cwd=tmp_path)
    assert refused.returncode != 0
    assert (refused.stdout + refused.stderr).strip().splitlines()[-1] == (
        f"output {written} already exists: pass --overwrite True to replace it, or another --output_dir"
    )
    assert written.stat().st_mtime_ns == before
    assert f"wrote {written}" in run_bundle(BUNDLE / "inference.json", tmp_path, *args, "--overwrite", "True")
    assert written.stat().st_mtime_ns != before


@pytest.mark.slow
def test_bad_input_fails_before_training(tmp_path):
    data = tmp_path / "data"
    entries = make_synthetic_dataset(data, cases=2)
    bad = data / "labelsTr" / "case_001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 19), np.uint8), AFFINE), bad)  # one slice short
    (data / "datalist.json").write_text(json.dumps({"training": entries[:1], "validation": entries[1:]}))
    bundle = copy_bundle(tmp_path / "bundles")
    arguments = ["run", "--config_file", str(bundle / "train.json"), "--dataset_dir", str(data), "--datalist",
                 str(data / "datalist.json"), *TINY]  # fmt: skip
    result = run_module("monai.bundle", arguments, cwd=tmp_path)
    assert result.returncode != 0
    assert str(bad) in result.stdout + result.stderr and "spatial shape" in result.stdout + result.stderr
    assert not (bundle / "models").exists()


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED} (set COVER3D_SHARED_DATA)")
def test_shared_data_datalists_are_disjoint_and_grouped():
    from cover3d.data import load_datalist

    for name, folder, pool_groups, test_groups in (("la_mri_2018", "la_mri_2018", 60, 20),
                                                   ("acdc", "acdc_cardiac_mri", 60, 20)):
        pool_file, test_file = REPO / "data_lists" / f"{name}_pool.json", REPO / "data_lists" / f"{name}_test.json"
        lists = {key: load_datalist(pool_file, key, base_dir=SHARED / folder) for key in ("training", "validation")}
        lists["test"] = load_datalist(test_file, "test", base_dir=SHARED / folder)

        def group(path: str) -> str:
            return re.sub(r"(_E[DS])?\.nii\.gz$", "", Path(path).name)

        groups = {key: {group(e["image"]) for e in entries} for key, entries in lists.items()}
        assert len(groups["training"] | groups["validation"]) == pool_groups and len(groups["test"]) == test_groups
        assert not groups["training"] & groups["validation"]
        assert not (groups["training"] | groups["validation"]) & groups["test"]
        for entries in lists.values():
            assert all(group(e["image"]) == group(e["label"]) for e in entries)
        if name == "acdc":  # both phases of every patient, on the same side
            assert all(len(entries) == 2 * len(groups[key]) for key, entries in lists.items())
