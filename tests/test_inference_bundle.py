"""The bundles' inference.json with a tiny network: outputs are ITK displacement fields consistent with the views."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser

from cover3d.data.field_io import read_displacement_field
from cover3d.networks import CoverNet
from python_command import run_module

REPO = Path(__file__).resolve().parents[1]
CHANNELS, GROUPS = (4, 8, 8, 16, 16), (2, 2, 2, 1, 1)
NET = ["--channels", str(list(CHANNELS)).replace(" ", ""), "--groups", str(list(GROUPS)).replace(" ", "")]
PIXDIM = 4.0  # coarser than the bundles' default: small volumes keep the whole-volume forward fast


def configs(name: str) -> str:
    return f"['{REPO / 'bundles' / name / 'train.json'}','{REPO / 'bundles' / name / 'inference.json'}']"


def tiny_weights(folder: Path) -> str:
    torch.manual_seed(0)
    path = folder / "model.pt"
    torch.save(CoverNet(channels=CHANNELS, groups=GROUPS).state_dict(), path)
    return str(path)


def run_inference(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    arguments = ["run", "--config_file", configs(name), *NET, "--pixdim", f"[{PIXDIM},{PIXDIM},{PIXDIM}]", *args]
    return run_module("monai.bundle", arguments, cwd=cwd)


def itk_resampled(moving: Path, field: Path) -> np.ndarray:
    """``moving`` resampled by plain SimpleITK (no cover3d reader) onto the field's grid with the field as
    transform, as (X, Y, Z)."""
    image = sitk.ReadImage(str(moving), sitk.sitkFloat32)
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(field)))
    resampled = sitk.Resample(image, sitk.ReadImage(str(field)), transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)


def interior(ddf: torch.Tensor, margin: float = 1.0) -> np.ndarray:
    """Voxels whose sample point p + ddf(p) is at least ``margin`` voxels inside the grid."""
    shape = np.array(ddf.shape[1:])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    target = grid + ddf.numpy()
    return np.all((target >= margin) & (target <= shape[:, None, None, None] - 1 - margin), axis=0)


def error_chain(error: BaseException | None) -> str:
    """Messages of an exception and its causes (MONAI wraps config-expression errors)."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def volume(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32)).transpose(2, 1, 0)


@pytest.mark.slow
def test_ct_random_deformation_writes_consistent_itk_fields(tmp_path):
    image = REPO / "sample_data" / "ct" / "ts_pulmonary_crop.nii.gz"
    outputs = tmp_path / "predictions"
    args = ["--image_a", str(image), "--deformation_seed", "3", "--weights", tiny_weights(tmp_path)]
    result = run_inference("cover_ct", *args, "--predictions_dir", str(outputs), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prefix = outputs / "ts_pulmonary_crop_random3"
    for key in ("field", "true_field", "warped", "fixed", "moving"):
        assert Path(f"{prefix}_{key}.nii.gz").is_file(), key
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["mode"] == "random deformation" and summary["spacing_mm"] == [PIXDIM] * 3
    assert summary["epe_identity"] > 1  # the prediction's accuracy: test_shipped_weights_predict_... below

    # the saved fixed view is the saved moving view resampled by ITK with the saved true field
    true, _ = read_displacement_field(f"{prefix}_true_field.nii.gz")
    assert true.abs().amax() > 2  # a real deformation, in voxels
    inside = interior(true)
    fixed = volume(Path(f"{prefix}_fixed.nii.gz"))
    resampled = itk_resampled(Path(f"{prefix}_moving.nii.gz"), Path(f"{prefix}_true_field.nii.gz"))
    np.testing.assert_allclose(resampled[inside], fixed[inside], atol=1e-4)
    # and the saved warped view is the moving view resampled with the predicted field
    predicted, _ = read_displacement_field(f"{prefix}_field.nii.gz")
    inside = interior(predicted)
    resampled = itk_resampled(Path(f"{prefix}_moving.nii.gz"), Path(f"{prefix}_field.nii.gz"))
    np.testing.assert_allclose(resampled[inside], volume(Path(f"{prefix}_warped.nii.gz"))[inside], atol=1e-4)


@pytest.mark.slow
def test_shipped_weights_predict_the_random_deformation_and_outputs_are_never_overwritten(tmp_path, capfd):
    """inference.json with the committed weights on a volume they never saw: the predicted field is much closer to
    the true one than the zero field (measured: EPE 3.3 vs 8.1 voxels) and aligns the views; the log names the
    weights and every written file; a second run into the same folder is refused, naming a file and the way out."""
    from monai.bundle import run

    weights = REPO / "weights" / "cover_mri_pool_2mm" / "model.pt"
    outputs = tmp_path / "predictions"
    args = dict(config_file=json.loads(configs("cover_mri").replace("'", '"')), deformation_seed=5,
                image_a=str(REPO / "sample_data" / "mri" / "stroke_flair.nii.gz"), weights=str(weights),
                predictions_dir=str(outputs))  # fmt: skip
    run(**args)
    log = "".join(capfd.readouterr())  # the bundle's logging.conf logs to the console
    prefix = outputs / "stroke_flair_random5"
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["epe"] < 0.8 * summary["epe_identity"], summary
    assert summary["similarity"]["ncc_after"] > summary["similarity"]["ncc_before"] + 0.1, summary
    assert summary["folding_fraction"] < 0.05, summary
    assert f"loaded weights {weights}" in log
    for key in ("field", "true_field", "warped", "fixed", "moving"):
        assert f"wrote {prefix}_{key}.nii.gz" in log, key

    written = {p: p.stat().st_mtime_ns for p in outputs.iterdir()}
    with pytest.raises(Exception) as caught:
        run(**args)
    message = f"output {prefix}_field.nii.gz already exists (and 5 more output(s) of this run): pass --overwrite True"
    assert f"{message} to replace it, or another --predictions_dir" in error_chain(caught.value)
    assert {p: p.stat().st_mtime_ns for p in outputs.iterdir()} == written  # nothing touched
    run(**args, overwrite=True)
    assert all(p.stat().st_mtime_ns != t for p, t in written.items())


@pytest.mark.slow
def test_mri_two_volumes_on_the_fixed_grid(tmp_path):
    from monai.bundle import run

    folder = REPO / "sample_data" / "mri"
    outputs = tmp_path / "predictions"
    run(
        config_file=json.loads(configs("cover_mri").replace("'", '"')),
        image_a=str(folder / "stroke_t1.nii.gz"), image_b=str(folder / "stroke_t2.nii.gz"),
        weights=tiny_weights(tmp_path), predictions_dir=str(outputs), channels=list(CHANNELS), groups=list(GROUPS),
        pixdim=[PIXDIM] * 3,
    )  # fmt: skip
    prefix = outputs / "stroke_t1_to_stroke_t2"
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["mode"] == "two volumes" and "epe" not in summary
    assert not Path(f"{prefix}_true_field.nii.gz").exists()
    field = sitk.ReadImage(f"{prefix}_field.nii.gz")
    fixed = sitk.ReadImage(f"{prefix}_fixed.nii.gz")
    assert field.GetSize() == fixed.GetSize() == tuple(summary["shape"])
    np.testing.assert_allclose(field.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(field.GetDirection(), fixed.GetDirection(), atol=1e-6)
    assert volume(Path(f"{prefix}_moving.nii.gz")).std() > 0.05  # view a really resampled onto b's grid


def test_default_outputs_go_to_the_bundle_folder_and_bad_input_is_named(tmp_path):
    from monai.bundle import run

    parser = ConfigParser()
    parser.read_config(json.loads(configs("cover_ct").replace("'", '"')))
    assert Path(parser.get_parsed_content("predictions_dir")) == REPO / "bundles" / "cover_ct" / "predictions"

    weights = tiny_weights(tmp_path)
    common = dict(weights=weights, predictions_dir=str(tmp_path / "out"), channels=list(CHANNELS), groups=list(GROUPS))
    config = json.loads(configs("cover_ct").replace("'", '"'))
    for overrides, expected in (({}, "--image_a"), ({"image_a": str(tmp_path / "absent.nii.gz")}, "absent.nii.gz")):
        with pytest.raises(Exception) as caught:
            run(config_file=config, **overrides, **common)
        assert expected in error_chain(caught.value)
    assert not (tmp_path / "out").exists()


def test_predict_field_pads_to_the_network_size_and_crops_back():
    from cover3d.engine.field_inference import predict_field

    torch.manual_seed(0)
    network = CoverNet(channels=CHANNELS, groups=GROUPS).train()
    views = torch.rand(2, 1, 1, 32, 32, 32)
    with torch.no_grad():
        direct = network.eval()(torch.cat([views[0], views[1]], 1))
    network.train()
    torch.testing.assert_close(predict_field(network, views[0], views[1]), direct)
    assert network.training  # mode restored
    odd = predict_field(network, views[0][..., :30, :27, :19], views[1][..., :30, :27, :19])
    assert odd.shape == (1, 3, 30, 27, 19) and torch.isfinite(odd).all()
    with pytest.raises(ValueError, match="one shape"):
        predict_field(network, views[0], views[1][..., :30])


def test_two_volume_inference_reports_similarity_and_warns(tmp_path, caplog):
    """NCC / mutual information before and after warping and the foreground overlap land in summary.json and the
    log; a warp that makes the volumes less similar and volumes that barely overlap are warned about."""
    import logging

    import nibabel as nib
    from monai.transforms import Compose

    from cover3d.engine.field_inference import inference_pair, save_field_prediction
    from cover3d.transforms import ct_preprocessing

    image = REPO / "sample_data" / "ct" / "ts_aorta_crop.nii.gz"
    preprocessing = Compose(ct_preprocessing(keys="image", pixdim=(PIXDIM,) * 3))
    torch.manual_seed(0)
    network = CoverNet(channels=CHANNELS, groups=GROUPS)
    caplog.set_level(logging.INFO)

    # the same volume twice: NCC 1 before, and the untrained network's non-zero field can only lower it
    paths = save_field_prediction(network, inference_pair(preprocessing, image, image), tmp_path / "same")
    summary = json.loads(Path(paths["summary"]).read_text())
    similarity = summary["similarity"]
    assert similarity["ncc_before"] == pytest.approx(1.0, abs=1e-6) and similarity["ncc_after"] < 0.99
    assert similarity["mi_after"] < similarity["mi_before"] and summary["foreground_overlap"] == pytest.approx(1.0)
    assert [w.split(":")[0] for w in summary["warnings"]] == ["the warp made the volumes less similar"] * 2
    assert f"NCC 1.000 -> {similarity['ncc_after']:.3f}" in caplog.text and "less similar: NCC" in caplog.text

    # the same volume moved by 80 % of its extent in world coordinates: they barely overlap
    loaded = nib.load(str(image))
    affine = loaded.affine.copy()
    affine[:3, 3] += 0.8 * loaded.affine[:3, :3] @ np.array(loaded.shape[:3])
    nib.save(nib.Nifti1Image(np.asarray(loaded.dataobj), affine), str(tmp_path / "moved.nii.gz"))
    paths = save_field_prediction(network, inference_pair(preprocessing, tmp_path / "moved.nii.gz", image), tmp_path)
    summary = json.loads(Path(paths["summary"]).read_text())
    assert summary["foreground_overlap"] < 0.3
    assert summary["warnings"][0].startswith("the volumes barely overlap") and "barely overlap" in caplog.text


def test_similarity_report_is_quiet_when_the_warp_helps():
    from cover3d.engine.field_inference import similarity_report

    fixed = torch.zeros(1, 32, 32, 32)
    fixed[:, 8:24, 8:24, 8:24] = torch.rand(1, 16, 16, 16) * 0.5 + 0.5
    moving = torch.roll(fixed, shifts=3, dims=1)
    report = similarity_report(moving, fixed.clone(), fixed)
    assert report["warnings"] == [] and report["similarity"]["ncc_after"] == pytest.approx(1.0)
    assert report["similarity"]["ncc_before"] < 0.9 and 0.7 < report["foreground_overlap"] < 1.0
