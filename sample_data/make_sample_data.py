"""Rebuild cover3d's embedded sample (sample_data/ct, sample_data/mri, data_lists/sample_*.json).

Source: the project's shared data folder (``../shared/data`` next to the repository, or $COVER3D_SHARED_DATA).
Only volumes whose licence allows redistribution are used (see sample_data/README.md).

Per volume: axes with voxels finer than 2.5 mm are resampled to one isotropic spacing
``t = clip(E / 64, finest-coarse, 2.5 mm)``, E = smallest physical extent among those axes, so those axes keep
>= 64 voxels where the field of view allows; axes already >= 2.5 mm are kept. Resampling: Gaussian
anti-aliasing (sigma = (new - old) / 2 mm per axis, as skimage's resize) then linear interpolation onto a grid
covering the same field of view; values rounded back to the source dtype (int16 HU for CT, uint8/int16 MRI).

Usage (from the repository root): ``python sample_data/make_sample_data.py``
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from cover3d.data import make_datalist

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COVER3D_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET_MM = 2.5
MIN_VOXELS = 64
CASES = {
    "ct": ("ct_samples", ["ts_example_ct", "ts_aorta_crop", "ts_pulmonary_crop"]),
    "mri": ("mri_samples", ["stroke_t1", "stroke_t2", "stroke_flair", "seg3d_head_mr", "fpg_t2", "ts_example_mr"]),
}
VALIDATION = {"ct": "ts_pulmonary_crop", "mri": "stroke_flair"}  # also in "training": the sample is tiny


def sample_spacing(spacing: tuple[float, ...], size: tuple[int, ...]) -> tuple[float, ...]:
    """Output spacing (mm): axes finer than TARGET_MM share one spacing keeping them >= MIN_VOXELS if possible."""
    fine = [i for i, s in enumerate(spacing) if s < TARGET_MM]
    if not fine:
        return tuple(spacing)
    extent = min(size[i] * spacing[i] for i in fine)
    target = min(TARGET_MM, max(extent / MIN_VOXELS, max(spacing[i] for i in fine)))
    return tuple(target if i in fine else s for i, s in enumerate(spacing))


def downsample(image: sitk.Image, spacing: tuple[float, ...]) -> sitk.Image:
    """Anti-aliased linear resampling of ``image`` to ``spacing`` over the same field of view, in the source dtype."""
    old, new = np.asarray(image.GetSpacing()), np.asarray(spacing)
    if np.allclose(old, new):
        return image
    source = sitk.Cast(image, sitk.sitkFloat32)
    sigma_mm = np.maximum(new - old, 0.0) / 2.0
    smooth = sitk.DiscreteGaussian(
        source, variance=(sigma_mm**2).tolist(), maximumKernelWidth=64, maximumError=0.001, useImageSpacing=True
    )
    size = np.maximum(np.round(np.asarray(image.GetSize()) * old / new), 1).astype(int)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + direction @ ((new - old) / 2.0)  # same field-of-view corner
    array = sitk.GetArrayViewFromImage(image)
    resampled = sitk.Resample(
        smooth,
        size.tolist(),
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        new.tolist(),
        image.GetDirection(),
        float(array.min()),
        sitk.sitkFloat32,
    )
    info = np.iinfo(array.dtype)
    values = np.clip(np.round(sitk.GetArrayFromImage(resampled)), info.min, info.max).astype(array.dtype)
    result = sitk.GetImageFromArray(values)
    result.CopyInformation(resampled)
    return result


def expected_affine(source_affine: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """RAS affine of the resampled grid: new voxel i sits at old continuous index i * f + (f - 1) / 2, f = new/old."""
    f = new / old
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(f)
    to_old[:3, 3] = (f - 1.0) / 2.0
    return source_affine @ to_old


def convert(source: Path, target: Path) -> str:
    """Resample one volume, write it, check its affine with nibabel; return a table row for the README."""
    image = sitk.ReadImage(str(source))
    spacing = sample_spacing(image.GetSpacing(), image.GetSize())
    out = downsample(image, spacing)
    sitk.WriteImage(out, str(target), useCompression=True, compressionLevel=9)
    src, dst = nib.load(source), nib.load(target)
    affine = expected_affine(src.affine, np.asarray(image.GetSpacing()), np.asarray(spacing))
    assert np.allclose(dst.affine, affine, atol=1e-3), f"{target}: affine {dst.affine} != expected {affine}"
    assert dst.get_data_dtype() == src.get_data_dtype(), f"{target}: dtype changed"

    def fmt(values: tuple) -> str:
        return "x".join(f"{v:.3g}" for v in values)

    return (
        f"| {target.name} | {fmt(image.GetSize())} @ {fmt(image.GetSpacing())} mm | "
        f"{fmt(out.GetSize())} @ {fmt(out.GetSpacing())} mm | {dst.get_data_dtype()} | "
        f"{target.stat().st_size / 1e3:.0f} kB |"
    )


def main() -> None:
    if not SHARED.is_dir():
        raise FileNotFoundError(f"shared data folder not found: {SHARED} (set COVER3D_SHARED_DATA)")
    for modality, (folder, cases) in CASES.items():
        out_dir = REPO / "sample_data" / modality
        out_dir.mkdir(parents=True, exist_ok=True)
        for case in cases:
            print(convert(SHARED / folder / "images" / f"{case}.nii.gz", out_dir / f"{case}.nii.gz"))
        datalist = make_datalist(out_dir)  # paths relative to sample_data/<modality>
        datalist["validation"] = [e for e in datalist["training"] if e["image"] == f"{VALIDATION[modality]}.nii.gz"]
        path = REPO / "data_lists" / f"sample_{modality}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(datalist, indent=2) + "\n")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
