"""CT and MRI preprocessing presets on the embedded sample (sample_data/, shipped with the repository)."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from cover3d.data import load_datalist
from cover3d.transforms.presets import ct_preprocessing, mri_preprocessing

REPO = Path(__file__).resolve().parents[1]
PIXDIM = (2.5, 2.5, 3.0)  # anisotropic on purpose
PRESETS = {"ct": ct_preprocessing, "mri": mri_preprocessing}
THRESHOLDS = {"ct": (-500.0 + 1000.0) / 2000.0, "mri": 0.05}  # the presets' default foreground thresholds


def sample(modality: str) -> list[dict]:
    folder = REPO / "sample_data" / modality
    return load_datalist(REPO / "data_lists" / f"sample_{modality}.json", base_dir=folder)


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_preset_on_sample_gives_ras_unit_range_float32_at_pixdim(modality):
    preprocess = Compose(PRESETS[modality](pixdim=PIXDIM))
    entries = sample(modality)
    assert len(entries) == {"ct": 3, "mri": 6}[modality]
    for entry in entries:
        image = preprocess(entry)["image"]
        name = Path(entry["image"]).name
        assert image.dtype == torch.float32 and image.ndim == 4 and image.shape[0] == 1, name
        assert min(image.shape[1:]) >= 8, (name, image.shape)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.max()) > 0.5, name
        np.testing.assert_allclose(image.pixdim.numpy(), PIXDIM, atol=1e-3, err_msg=name)
        assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S"), name
        foreground = image[0] > THRESHOLDS[modality]  # tight crop (margin 0): every face touches the foreground
        for axis in range(3):
            assert foreground.select(axis, 0).any() and foreground.select(axis, -1).any(), (name, axis)


def test_ct_window_foreground_crop_and_margin(tmp_path):
    """Air (-1000 HU) around a 20x16x14-voxel box of water (0 HU), already on the PIXDIM grid."""
    volume = np.full((40, 40, 30), -1000, np.int16)
    volume[10:30, 12:28, 8:22] = 0
    path = tmp_path / "box_ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([*PIXDIM, 1.0])), path)
    tight = Compose(ct_preprocessing(pixdim=PIXDIM, hu_window=(-200.0, 300.0)))({"image": str(path)})["image"]
    padded = Compose(ct_preprocessing(pixdim=PIXDIM, hu_window=(-200.0, 300.0), margin=2))({"image": str(path)})
    assert tuple(tight.shape) == (1, 20, 16, 14)
    assert tuple(padded["image"].shape) == (1, 24, 20, 18)
    torch.testing.assert_close(tight.as_tensor(), torch.full_like(tight.as_tensor(), 0.4))  # (0 + 200) / 500
    assert float(padded["image"][0, 0].max()) == 0.0  # the margin is air, clipped to 0


def test_preset_with_label_resamples_it_with_nearest_neighbour(tmp_path):
    image_path = next(e["image"] for e in sample("mri") if e["image"].endswith("stroke_t1.nii.gz"))
    source = nib.load(image_path)
    label_path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(source.dataobj) > 60).astype(np.uint8), source.affine), label_path)
    preprocess = Compose(mri_preprocessing(label_keys="label", pixdim=PIXDIM, percentiles=(1.0, 99.0), margin=1))
    out = preprocess({"image": image_path, "label": str(label_path)})
    assert out["label"].shape == out["image"].shape and out["label"].dtype == torch.float32
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    torch.testing.assert_close(out["label"].affine, out["image"].affine)


def test_presets_are_lists_that_pickle_and_reject_bad_parameters():
    for preset in PRESETS.values():
        chain = preset()
        assert isinstance(chain, list)
        pickle.loads(pickle.dumps(Compose(chain)))  # DataLoader workers with spawn need this
    with pytest.raises(ValueError, match="hu_window"):
        ct_preprocessing(hu_window=(500.0, -500.0))
    with pytest.raises(ValueError, match="foreground_hu"):
        ct_preprocessing(hu_window=(-100.0, 200.0), foreground_hu=300.0)
    with pytest.raises(ValueError, match="percentiles"):
        mri_preprocessing(percentiles=(99.0, 1.0))
    with pytest.raises(ValueError, match="foreground_threshold"):
        mri_preprocessing(foreground_threshold=1.0)
