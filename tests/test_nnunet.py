"""nnU-Net interop: the nnU-Net backbone, the exporter, and nnU-Net itself fine-tuning from the exported weights."""

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

from cover3d.errors import InputValueError
from python_command import run_module

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "cover_mri"
NNUNET_MISSING = "nnU-Net interop needs the [nnunet] extra: pip install -e '.[nnunet]' -c constraints.txt"
DATASET = "Dataset501_Cover3dBlobs"


def pretrained_bundle(folder: Path, overlay: bool = True, bundle: Path = BUNDLE) -> tuple[Path, dict]:
    """``model.pt`` and ``metadata.json`` as a bundle (+ backbone_nnunet.json) writes them, for a small network."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "train.json")] + ([str(bundle / "backbone_nnunet.json")] if overlay else []))
    parser.update({"channels": [4, 8, 8, 16, 16], "patch_size": [32, 32, 32]})
    network = parser.get_parsed_content("network_def")
    metadata = parser.get_parsed_content("weights_metadata")
    folder.mkdir(parents=True)
    torch.save(network.state_dict(), folder / "model.pt")
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder / "model.pt", metadata


def write_raw_dataset(raw: Path, cases: int = 6) -> Path:
    """nnU-Net raw format: ``cases`` 40^3 volumes at 2 mm, a bright ellipsoid labelled 1 on a noisy background."""
    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij"))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for case in range(cases):
        centre, radii = rng.uniform(14, 26, 3)[:, None, None, None], rng.uniform(5, 10, 3)[:, None, None, None]
        label = (((grid - centre) / radii) ** 2).sum(0) <= 1
        image = 100 + 20 * rng.standard_normal(label.shape) + 200 * label
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(folder / "imagesTr" / f"blob_{case:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(folder / "labelsTr" / f"blob_{case:03d}.nii.gz"))
    dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1}, "numTraining": cases,
               "file_ending": ".nii.gz"}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (" ".join(command) + "\n" + result.stdout[-3000:] + result.stderr[-3000:])
    return result


def nnunet_command(name: str) -> str:
    """An nnU-Net console script of this interpreter's environment."""
    return str(Path(sys.executable).parent / name)


def test_nnunet_backbone_features_are_nnunet_decoder_stages():
    """Same tensors and key names as nnU-Net's own network (but its seg layers), features = its decoder stages."""
    pytest.importorskip("dynamic_network_architectures", reason=NNUNET_MISSING)
    from cover3d.networks import NnUNetBackbone
    from cover3d.networks.nets.nnunet_backbone import build_nnunet_network

    for architecture in ("PlainConvUNet", "ResidualEncoderUNet"):
        backbone = NnUNetBackbone(architecture=architecture, channels=(4, 8, 8, 16, 16)).eval()
        plans = backbone.nnunet_architecture()
        network = build_nnunet_network(plans["network_class_name"], plans["arch_kwargs"], 1, num_classes=3).eval()
        assert set(backbone.state_dict()) == {k for k in network.state_dict() if ".seg_layers." not in k}
        network.load_state_dict(backbone.state_dict(), strict=False)
        stages = []
        hooks = [stage.register_forward_hook(lambda m, i, o: stages.append(o)) for stage in network.decoder.stages]
        x = torch.randn(1, 1, 32, 32, 32)
        with torch.no_grad():
            network(x)
            features = backbone(x)
        for hook in hooks:
            hook.remove()
        assert [f.shape[1:] for f in features] == [(16, 2, 2, 2), (16, 4, 4, 4), (8, 8, 8, 8), (8, 16, 16, 16), (4, 32, 32, 32)]
        assert all(torch.equal(a, b) for a, b in zip(stages, features[1:])), architecture


def test_nnunet_backbone_settings_the_pyramid_cannot_use_are_named():
    pytest.importorskip("dynamic_network_architectures", reason=NNUNET_MISSING)
    from cover3d.networks import NnUNetBackbone

    with pytest.raises(InputValueError, match=r"strides\[2\] = \[1, 2, 2\]"):
        NnUNetBackbone(strides=[1, 2, [1, 2, 2], 2, 2])


def test_missing_nnunet_package_names_the_extra(monkeypatch):
    from cover3d.networks import NnUNetBackbone

    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)  # import now fails
    with pytest.raises(InputValueError, match=r"cover3d\[nnunet\]"):
        NnUNetBackbone()


def test_export_refuses_weights_of_a_backbone_nnunet_cannot_build(tmp_path):
    from cover3d.export import nnunet_plans

    _, metadata = pretrained_bundle(tmp_path / "models", overlay=False)  # the default BasicUNet-layout backbone
    with pytest.raises(InputValueError, match="pretraining.backbone_class is 'cover3d.networks.UNetBackbone'"):
        nnunet_plans({"configurations": {"3d_fullres": {}}}, {"channel_names": {"0": "MRI"}}, metadata)


def test_export_refuses_plans_that_do_not_match_the_checkpoint(tmp_path):
    pytest.importorskip("nnunetv2", reason=NNUNET_MISSING)
    from cover3d.export import check_checkpoint_matches_plans, nnunet_checkpoint
    from cover3d.networks.weights import read_state_dict

    weights, metadata = pretrained_bundle(tmp_path / "models")
    architecture = json.loads(json.dumps(metadata["pretraining"]["nnunet"]))
    plans = {"dataset_name": DATASET, "plans_name": "p", "image_reader_writer": "NibabelIO", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": {"architecture": architecture}}}  # fmt: skip
    dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1}}
    checkpoint = nnunet_checkpoint(read_state_dict(weights))
    assert check_checkpoint_matches_plans(checkpoint, plans, "3d_fullres", dataset) == len(checkpoint["network_weights"])
    architecture["arch_kwargs"]["features_per_stage"][-1] = 32  # plans for a wider bottleneck than pretrained
    with pytest.raises(InputValueError, match=r"network_weights encoder.stages.4.0.convs.0.conv.weight has shape "
                                              r"\(16, 16, 3, 3, 3\), the network the plans build has \(32, 16, 3, 3, 3\)"):
        check_checkpoint_matches_plans(checkpoint, plans, "3d_fullres", dataset)


def test_exported_ct_normalisation_is_the_pretraining_hu_window(tmp_path):
    """nnU-Net's CTNormalization with the exported intensity properties = cover_ct's HU window -> [0, 1], clipped."""
    pytest.importorskip("nnunetv2", reason=NNUNET_MISSING)
    from monai.transforms import ScaleIntensityRange
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    from cover3d.export import nnunet_plans

    _, metadata = pretrained_bundle(tmp_path / "models", bundle=REPO / "bundles" / "cover_ct")
    base = {"image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "original_median_shape_after_transp":
            [100, 100, 100], "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "configurations": {"3d_fullres": {}},
            "foreground_intensity_properties_per_channel": {"0": {"mean": 40.0, "std": 300.0, "percentile_00_5": -900.0,
                                                                  "percentile_99_5": 1500.0}}}  # fmt: skip
    plans = nnunet_plans(base, {"channel_names": {"0": "CT"}}, metadata)
    config = plans["configurations"]["3d_fullres"]
    assert config["normalization_schemes"] == ["CTNormalization"] and config["spacing"] == [2.5, 2.5, 2.5]
    hu = np.random.default_rng(0).uniform(-2000, 3000, (1, 20, 20, 20)).astype(np.float32)
    normaliser = CTNormalization(intensityproperties=plans["foreground_intensity_properties_per_channel"]["0"])
    expected = ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True)(hu)
    np.testing.assert_allclose(normaliser.run(hu.copy()), np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIO", "NibabelIOWithReorient"])
def test_exported_spacing_is_on_the_axes_nnunet_reads(reader, tmp_path):
    """An anisotropic pretraining spacing lands on the axes of the arrays nnU-Net's reader makes of an (x, y, z) file,
    after the plans' transpose_forward."""
    pytest.importorskip("nnunetv2", reason=NNUNET_MISSING)
    import pydoc

    from cover3d.export.nnunet import _to_nnunet_axes

    path = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 14), np.float32), np.diag([1.0, 2.0, 3.0, 1.0])), str(path))
    reader_class = pydoc.locate(f"nnunetv2.imageio.{'simpleitk' if 'ITK' in reader else 'nibabel'}_reader_writer.{reader}")
    _, properties = reader_class().read_images([str(path)])
    transpose = [1, 0, 2]
    read = [float(properties["spacing"][axis]) for axis in transpose]
    assert _to_nnunet_axes([1.0, 2.0, 3.0], {"image_reader_writer": reader, "transpose_forward": transpose}, "spacing") == read


@pytest.mark.slow
def test_nnunet_fine_tunes_from_the_exported_weights(tmp_path):
    """Raw dataset -> fingerprint -> nnU-Net's plans -> cover3d export -> preprocessing -> nnU-Net's trainer with
    -pretrained_weights: every non-head tensor of the network nnU-Net built is the exported one; 2 iterations train."""
    pytest.importorskip("nnunetv2", reason=NNUNET_MISSING)
    from cover3d.export.__main__ import main as export_main

    weights, metadata = pretrained_bundle(tmp_path / "models")
    raw = tmp_path / "nnUNet_raw"
    write_raw_dataset(raw)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(tmp_path / "nnUNet_preprocessed"),
           "nnUNet_results": str(tmp_path / "nnUNet_results"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "501", "-npfp", "1", "--no_pp"], env)  # fingerprint, plans
    preprocessed = tmp_path / "nnUNet_preprocessed" / DATASET
    export_main(["--format", "nnunet", "--weights", str(weights), "--plans", str(preprocessed / "nnUNetPlans.json"),
                 "--out", str(preprocessed)])  # python -m cover3d.export ..., in this process
    plans = json.loads((preprocessed / "nnUNetPlans_cover3d.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["architecture"] == metadata["pretraining"]["nnunet"]
    assert config["spacing"] == [2.0, 2.0, 2.0] and config["patch_size"] == [32, 32, 32]
    assert config["normalization_schemes"] == ["RescaleTo01Normalization"]
    run([nnunet_command("nnUNetv2_preprocess"), "-d", "501", "-plans_name", "nnUNetPlans_cover3d", "-c", "3d_fullres",
         "-np", "1"], env)  # fmt: skip
    out = tmp_path / "fine_tuning.json"
    pretrained = preprocessed / "nnUNetPlans_cover3d_pretrained.pt"
    worker = [sys.executable, str(REPO / "tests" / "nnunet_worker.py"), "501", "nnUNetPlans_cover3d", str(pretrained), str(out)]
    run(worker, {**env, "nnUNet_n_proc_DA": "0"})  # data augmentation in the main process
    result = json.loads(out.read_text())
    exported = torch.load(pretrained, weights_only=True)["network_weights"]
    cover_state = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, cover_state["backbone." + k]) for k, v in exported.items())
    assert result["compared"] == len(exported) and result["equal"] == result["compared"], result  # 100 % of non-head tensors
    assert result["heads"] == 8  # 4 deep-supervision 1x1x1 convolutions (weight, bias): the only new layers
    assert len(result["train_losses"]) == 1 and np.isfinite(result["train_losses"][0]), result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cover_ct"])  # cover_mri: under DDP with a pretext, below
def test_pretraining_bundle_runs_with_the_nnunet_backbone(name, tmp_path):
    """The backbone_nnunet.json overlay: the bundle trains unchanged, and its metadata holds the nnU-Net architecture."""
    pytest.importorskip("dynamic_network_architectures", reason=NNUNET_MISSING)
    from cover3d.networks import NnUNetBackbone

    configs = f"['{REPO / 'bundles' / name / 'train.json'}','{REPO / 'bundles' / name / 'backbone_nnunet.json'}']"
    tiny = ["--epochs", "1", "--iterations_per_epoch", "2", "--batch_size", "1", "--validation_pairs", "1",
            "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]", "--channels", "[4,8,8,16,16]",
            "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs")]  # fmt: skip
    result = run_module("monai.bundle", ["run", "--config_file", configs, *tiny], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "val_epe" in result.stdout + result.stderr
    metadata = json.loads((tmp_path / "models" / "metadata.json").read_text())["pretraining"]
    assert metadata["backbone_class"] == "cover3d.networks.NnUNetBackbone" and "basic_unet" not in metadata
    assert metadata["nnunet"] == NnUNetBackbone(channels=(4, 8, 8, 16, 16)).nnunet_architecture()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "backbone.decoder.transpconvs.0.weight" in state and "backbone.conv_0.conv_0.conv.weight" not in state


@pytest.mark.slow
def test_two_gloo_processes_pretrain_with_the_nnunet_backbone_and_a_pretext_and_resume(tmp_path):
    """The nnU-Net backbone on the multi-process path, with the cycle pretext (its pyramid reached through
    ``@network_def`` under DDP): one run of 2 iterations, then the same command with 2 epochs resumes from its
    checkpoint; rank 0 alone writes the weights."""
    pytest.importorskip("dynamic_network_architectures", reason=NNUNET_MISSING)
    bundle = REPO / "bundles" / "cover_mri"
    configs = str([str(bundle / f) for f in ("train.json", "backbone_nnunet.json", "pretext_cycle.json",
                                             "multi_gpu_train.json")])  # fmt: skip
    tiny = ["--iterations_per_epoch", "2", "--log_interval", "1", "--batch_size", "1", "--validation_pairs", "1",
            "--patch_size", "[32,32,32]", "--context_size", "[48,48,48]", "--channels", "[4,8,8,16,16]", "--ckpt_dir", str(tmp_path / "models"),
            "--output_dir", str(tmp_path / "runs")]  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + (os.getpid() + 7) % 1000), "-m", "monai.bundle", "run", "--config_file", configs, *tiny]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = []
    for epochs in ("1", "2"):
        result = subprocess.run([*launcher, "--epochs", epochs], cwd=tmp_path, capture_output=True, text=True, env=env)
        logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, logs[-1][-4000:]
        assert logs[-1].count("final weights written") == 1
    assert "checkpoint_2.pt: iteration 2 of 4" in logs[1] and "loss_cycle" in logs[1]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "backbone.decoder.transpconvs.0.weight" in state
