"""Reading (SimpleITKReader vs NibabelReader), input validation, pre-flight check and datalists."""

from __future__ import annotations

import json
import locale
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import NibabelReader
from monai.transforms import Compose, LoadImaged, Orientationd, Spacingd

from cover3d.data import SimpleITKReader, load_datalist, make_datalist, preflight_check
from cover3d.data.datalist import main as datalist_main
from cover3d.transforms.presets import ct_preprocessing
from cover3d.transforms.validate import CheckVolumed

REPO = Path(__file__).resolve().parents[1]
SPACING = (0.8, 1.1, 2.4)  # anisotropic; extents avoid the .5 rounding edge of Spacingd
ORIGIN = (10.0, -20.0, 35.0)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Proper rotation (det +1) from angles in degrees about x, y, z."""
    cx, cy, cz = np.cos(np.radians([ax, ay, az]))
    sx, sy, sz = np.sin(np.radians([ax, ay, az]))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {  # both proper rotations (det +1), as a DICOM series requires
    "oblique": rotation(20, -10, 30),
    "permuted": np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]),  # axis swaps and flips
}


def synthetic_volume(direction: np.ndarray) -> sitk.Image:
    """int16 'CT' of 16x20x12 voxels (x, y, z), anisotropic spacing, given direction, smooth structure."""
    z, y, x = np.meshgrid(np.arange(12), np.arange(20), np.arange(16), indexing="ij")
    values = 800.0 * np.sin(x / 3.0) * np.cos(y / 4.0) + 60.0 * z - 300.0
    image = sitk.GetImageFromArray(np.round(values).astype(np.int16))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction.flatten().tolist())
    return image


@pytest.fixture(scope="module")
def oblique() -> sitk.Image:
    return synthetic_volume(DIRECTIONS["oblique"])


def write_dicom_series(image: sitk.Image, folder: Path) -> Path:
    """Write a 3D image as one DICOM file per slice with the geometry tags a series reader needs. GDCM's writer sets
    the process locale to "C" (Python's text I/O then defaults to ASCII for every later test): it is restored."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_slices(image, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(image: sitk.Image, folder: Path) -> Path:
    folder.mkdir(parents=True)
    d = image.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.7"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0010|0020": "COVER3D-TEST",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0008|0018": f"{uid}.3.{k}",
            "0020|0013": str(k + 1),
            "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for tag, value in tags.items():
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_k)
    return folder


@pytest.fixture(scope="module", params=list(DIRECTIONS))
def volume_files(request, tmp_path_factory) -> tuple[str, sitk.Image, dict[str, Path]]:
    """The synthetic volume written as NIfTI, NRRD, MHA and a DICOM series folder."""
    image = synthetic_volume(DIRECTIONS[request.param])
    root = tmp_path_factory.mktemp(request.param)
    files = {suffix: root / f"vol{suffix}" for suffix in (".nii.gz", ".nrrd", ".mha")}
    for path in files.values():
        sitk.WriteImage(image, str(path))
    files["dicom"] = write_dicom_series(image, root / "dicom_series")
    return request.param, image, files


def read(reader, path):
    return reader.get_data(reader.read(str(path)))


def test_simpleitk_reader_matches_nibabel_and_world_coordinates(volume_files):
    _, image, files = volume_files
    reference, ref_meta = read(NibabelReader(), files[".nii.gz"])
    reference = np.asarray(reference)
    # independent of nibabel: voxel (i, j, k) of the array is SimpleITK's pixel (i, j, k), at its RAS position
    corner = (15, 3, 11)
    lps = np.asarray(image.TransformIndexToPhysicalPoint(corner))
    assert reference[corner] == image.GetPixel(corner)
    np.testing.assert_allclose(ref_meta["affine"] @ (*corner, 1), (-lps[0], -lps[1], lps[2], 1), atol=1e-3)
    for name in (".nii.gz", ".nrrd", ".mha", "dicom"):
        array, meta = read(SimpleITKReader(), files[name])
        assert array.shape == (16, 20, 12), name
        np.testing.assert_array_equal(array, reference, err_msg=name)
        np.testing.assert_allclose(meta["affine"], ref_meta["affine"], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(meta["original_affine"], meta["affine"])
        np.testing.assert_array_equal(meta["spatial_shape"], (16, 20, 12))
        np.testing.assert_allclose(meta["spacing"], SPACING, atol=1e-5)
        assert np.isnan(meta["original_channel_dim"]) and meta["space"] == "RAS", name


@pytest.mark.parametrize("volume_files", ["permuted"], indirect=True)
def test_loaded_and_resampled_volumes_agree_across_formats(volume_files):
    """LoadImaged + Orientationd + Spacingd: NIfTI via NibabelReader == NRRD / DICOM folder via SimpleITKReader.

    Oblique volumes are compared at reader level only: NIfTI stores the rotation as a float32 quaternion, and
    that rounding can make Spacingd choose a grid shifted by a fraction of a voxel.
    """
    _, _, files = volume_files

    def chain(reader):
        load = LoadImaged("image", reader=reader, image_only=True, ensure_channel_first=True)
        return Compose([load, Orientationd("image", axcodes="RAS"), Spacingd("image", pixdim=(1.0, 1.0, 1.0))])

    reference = chain(NibabelReader())({"image": files[".nii.gz"]})["image"]
    assert reference.shape[0] == 1 and reference.ndim == 4
    assert nib.aff2axcodes(reference.affine.numpy()) == ("R", "A", "S")
    for fmt in (".nrrd", "dicom"):
        out = chain(SimpleITKReader())({"image": files[fmt]})["image"]
        assert out.shape == reference.shape, fmt
        torch.testing.assert_close(out.affine, reference.affine, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.as_tensor(), reference.as_tensor(), atol=1e-2, rtol=0)
        assert out.meta["filename_or_obj"] == str(files[fmt])


def test_simpleitk_reader_4d_nifti_gives_channels_last(tmp_path):
    array = np.random.default_rng(0).random((8, 9, 10, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / "t.nii.gz")
    data, meta = read(SimpleITKReader(), tmp_path / "t.nii.gz")
    np.testing.assert_array_equal(data, array)
    assert meta["original_channel_dim"] == -1
    np.testing.assert_array_equal(meta["spatial_shape"], (8, 9, 10))


def test_simpleitk_reader_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.nrrd"):
        SimpleITKReader().read(tmp_path / "nothere.nrrd")
    (tmp_path / "garbage.mha").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(ValueError, match="garbage.mha"):
        SimpleITKReader().read(tmp_path / "garbage.mha")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM series.*empty_dir"):
        SimpleITKReader().read(tmp_path / "empty_dir")
    assert SimpleITKReader().verify_suffix(tmp_path / "a.nrrd") and SimpleITKReader().verify_suffix(tmp_path)
    assert not SimpleITKReader().verify_suffix(tmp_path / "a.nii.gz")  # NIfTI stays with NibabelReader


# ----------------------------------------------------------------------------------------------------- validation


def save_nifti(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0])), path)
    return str(path)


@pytest.fixture()
def volumes(tmp_path) -> dict[str, str]:
    """One valid image/label pair and one file per kind of bad input."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(12, 10, 8)).astype(np.float32)
    with_nan = image.copy()
    with_nan[1, 2, 3] = np.nan
    with_nan[4, 5, 6] = np.inf
    (tmp_path / "garbage.nii.gz").write_bytes(b"not a nifti at all" * 40)
    return {
        "good": save_nifti(tmp_path / "good.nii.gz", image),
        "good_label": save_nifti(tmp_path / "good_label.nii.gz", (image > 0).astype(np.uint8)),
        "flat2d": save_nifti(tmp_path / "flat2d.nii.gz", image[:, :, 0]),
        "twochannel4d": save_nifti(tmp_path / "twochannel4d.nii.gz", np.stack([image, image], axis=-1)),
        "nanvol": save_nifti(tmp_path / "nanvol.nii.gz", with_nan),
        "small_label": save_nifti(tmp_path / "small_label.nii.gz", (image[:, :, :6] > 0).astype(np.uint8)),
        "garbage": str(tmp_path / "garbage.nii.gz"),
        "missing": str(tmp_path / "missing.nii.gz"),
    }


def load_and_check(**files: str) -> dict:
    keys = tuple(files)
    label_keys = tuple(k for k in keys if k == "label")
    image_keys = tuple(k for k in keys if k != "label")
    chain = [LoadImaged(keys, image_only=True, ensure_channel_first=True), CheckVolumed(image_keys, label_keys)]
    data = dict(files)
    for transform in chain:
        data = transform(data)
    return data


def chain_text(error: BaseException) -> str:
    """Messages of an exception and its causes (MONAI's Compose wraps transform errors)."""
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__
    return "\n".join(parts)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("flat2d", "2 spatial dimensions"),
        ("twochannel4d", "2 channels, expected 1"),
        ("nanvol", "2 non-finite"),
    ],
)
def test_check_volumed_names_file_and_problem(volumes, bad, message):
    with pytest.raises(ValueError, match=message) as error:
        load_and_check(image=volumes[bad])
    assert os.path.basename(volumes[bad]) in str(error.value)


def test_check_volumed_label_shape_mismatch_names_both_files(volumes):
    with pytest.raises(ValueError, match="label spatial shape") as error:
        load_and_check(image=volumes["good"], label=volumes["small_label"])
    assert "small_label.nii.gz" in str(error.value) and "good.nii.gz" in str(error.value)


def test_check_volumed_passes_valid_volumes_and_constant_image_fails(volumes, tmp_path):
    data = load_and_check(image=volumes["good"], label=volumes["good_label"])
    assert data["image"].shape == (1, 12, 10, 8)
    constant = save_nifti(tmp_path / "constant.nii.gz", np.zeros((6, 6, 6), np.int16))
    with pytest.raises(ValueError, match="constant.nii.gz: is constant"):
        load_and_check(image=constant)


@pytest.mark.parametrize("bad", ["missing", "garbage", "flat2d", "twochannel4d", "nanvol"])
def test_preset_chain_error_names_file(volumes, bad):
    """Missing and unreadable files fail in LoadImaged, content problems in CheckVolumed: both name the file."""
    with pytest.raises(Exception) as error:
        Compose(ct_preprocessing())({"image": volumes[bad]})
    assert os.path.basename(volumes[bad]) in chain_text(error.value)


def test_preflight_check_lists_every_bad_file(volumes):
    datalist = [
        {"image": volumes["good"], "label": volumes["good_label"]},
        {"image": volumes["flat2d"], "label": volumes["good_label"]},
        {"image": volumes["twochannel4d"], "label": volumes["good_label"]},
        {"image": volumes["nanvol"], "label": volumes["good_label"]},
        {"image": volumes["garbage"], "label": volumes["good_label"]},
        {"image": volumes["missing"], "label": volumes["good_label"]},
        {"image": volumes["good"], "label": volumes["small_label"]},
        {"image": volumes["good"]},
    ]
    with pytest.raises(ValueError) as error:
        preflight_check(datalist, keys="image", label_keys="label")
    text = str(error.value)
    lines = {line.strip().split(":")[0] for line in text.splitlines()[1:]}
    for bad in ("flat2d", "twochannel4d", "nanvol", "garbage", "missing", "small_label"):
        assert volumes[bad] in lines, (bad, text)
    assert volumes["good"] not in lines and volumes["good_label"] not in lines
    assert "2 spatial dimensions" in text and "2 channels" in text and "non-finite" in text
    assert "unreadable" in text and "file not found" in text and "no 'label' key" in text
    assert f"image {volumes['good']} spatial shape" in text


def test_preflight_check_compares_volumes_with_the_training_patch(tmp_path, caplog):
    """Spacing 1.5 x 1.5 x 2 mm: 20 x 16 x 12 voxels are 30 x 24 x 24 mm, i.e. [20, 16, 16] voxels at 1.5 mm."""
    path = save_nifti(tmp_path / "slab.nii.gz", np.random.rand(20, 16, 12).astype(np.float32))
    with pytest.raises(ValueError, match=r"^pre-flight check: .*slab.nii.gz: much smaller than the training patch: "
                       r"\[20, 16, 16\] voxels at \[1.5, 1.5, 1.5\] mm .*patch_size \[48, 16, 16\]"):
        preflight_check([{"image": path}], keys="image", patch_size=(48, 16, 16), pixdim=(1.5, 1.5, 1.5))
    caplog.set_level(logging.WARNING)
    preflight_check([{"image": path}], keys="image", patch_size=(32, 16, 16), pixdim=(1.5, 1.5, 1.5))
    assert "smaller than the training patch [32, 16, 16] on RAS axis x (L-R)" in caplog.text
    assert "slab.nii.gz [20, 16, 16] (20 < 32)" in caplog.text
    not_divisible = r"^pre-flight check: patch_size \[40, 16, 16\] is not divisible by 16.*use e.g. \[32, 16, 16\]"
    with pytest.raises(ValueError, match=not_divisible):
        preflight_check([{"image": path}], keys="image", patch_size=(40, 16, 16))


def test_preflight_check_groups_warnings_names_the_axis_and_ends_with_a_summary(tmp_path, caplog):
    """Five volumes short on z, two short on x: two lines with counts and examples, then the summary line."""
    entries = [{"image": save_nifti(tmp_path / f"thin_{i}.nii.gz", np.random.rand(20, 20, 10).astype(np.float32))}
               for i in range(5)]  # fmt: skip
    entries += [{"image": save_nifti(tmp_path / f"narrow_{i}.nii.gz", np.random.rand(12, 20, 20).astype(np.float32))}
                for i in range(2)]  # fmt: skip
    caplog.set_level(logging.INFO, logger="cover3d.data.checks")
    report = preflight_check(entries, keys="image", patch_size=(16, 16, 16), pixdim=(1.5, 1.5, 1.5))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    thin, narrow, summary = lines
    assert thin.startswith("5 volume(s) smaller than the training patch [16, 16, 16] on RAS axis z (I-S) at ")
    assert "thin_0.nii.gz [20, 20, 13] (13 < 16); thin_1.nii.gz" in thin and thin.endswith("and 2 more")
    assert narrow.startswith("2 volume(s) smaller than the training patch [16, 16, 16] on RAS axis x (L-R)")
    assert summary == "pre-flight check: 7 volumes checked, 7 warnings of 2 kinds, 0 errors" == report.summary()


def test_preflight_check_missing_only_and_valid(volumes):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz: file not found"):
        preflight_check([{"image": volumes["missing"]}], keys="image")
    preflight_check([{"image": volumes["good"], "label": volumes["good_label"]}], keys="image", label_keys="label")


# ------------------------------------------------------------------------------------------------------ datalists


def test_load_datalist_errors_name_json_and_key(tmp_path, volumes):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match=r"empty\.json.*'training'"):
        load_datalist(empty)
    with pytest.raises(ValueError, match=r"empty\.json has no 'validation'"):
        load_datalist(empty, key="validation")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_datalist(tmp_path / "nothing.json")
    broken = tmp_path / "refs.json"
    broken.write_text(json.dumps({"training": [{"image": "good.nii.gz"}, {"image": "gone.nii.gz"}]}))
    with pytest.raises(FileNotFoundError, match=r"refs\.json.* references a missing file: .*gone\.nii\.gz") as error:
        load_datalist(broken)
    assert "good.nii.gz" not in str(error.value).split("missing file:", 1)[1]


def make_dataset(root: Path, oblique: sitk.Image) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    label = sitk.Cast(oblique > 0, sitk.sitkUInt8)
    for case, suffix in (("case_a", ".nii.gz"), ("case_b", ".nrrd"), ("case_c", ".mha")):
        sitk.WriteImage(oblique, str(images / f"{case}{suffix}"))
        sitk.WriteImage(label, str(labels / f"{case}.nii.gz"))
    write_dicom_series(oblique, images / "case_d")
    sitk.WriteImage(label, str(labels / "case_d.nii.gz"))
    (images / "notes.txt").write_text("not a volume")
    return images, labels


def test_datalist_cli_on_folder(tmp_path, oblique, capsys):
    """The CLI's main() in-process (a subprocess would add ~10 s of imports)."""
    images, labels = make_dataset(tmp_path / "data", oblique)
    out = tmp_path / "lists" / "data.json"
    args = [str(images), "--output", str(out), "--labels", str(labels), "--base-dir", str(tmp_path / "data")]
    too_small = (r"8 volumes checked, 0 warnings of 0 kinds, 4 errors .*\n.*case_a.nii.gz: much smaller than the "
                 r"training patch: \[16, 20, 12\].* on RAS axes x \(L-R\), y \(P-A\), z \(I-S\)")
    with pytest.raises(ValueError, match=too_small):
        datalist_main([*args, "--check"])  # the bundles' default 48^3 patch at the volumes' own spacing
    datalist_main([*args, "--val-fraction", "0.25", "--seed", "3", "--check", "--patch-size", "16", "16", "16",
                   "--pixdim", "0.5", "0.5", "0.5"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "3 training, 1 validation" in printed and "8 volumes checked, 0 warnings of 0 kinds, 0 errors" in printed
    content = json.loads(out.read_text())
    entries = content["training"] + content["validation"]
    assert sorted(e["image"] for e in entries) == [
        "images/case_a.nii.gz",
        "images/case_b.nrrd",
        "images/case_c.mha",
        "images/case_d",
    ]
    assert all(e["label"] == f"labels/{Path(e['image']).name.split('.')[0]}.nii.gz" for e in entries)
    assert content == make_datalist(images, labels, base_dir=tmp_path / "data", val_fraction=0.25, seed=3)
    loaded = load_datalist(out, "validation", base_dir=tmp_path / "data")
    assert len(loaded) == 1 and os.path.exists(loaded[0]["image"]) and os.path.exists(loaded[0]["label"])


def test_label_paths_relative_to_the_image_folder_are_normalised(tmp_path, oblique):
    images, labels = make_dataset(tmp_path / "data", oblique)
    out = tmp_path / "data.json"
    out.write_text(json.dumps(make_datalist(images, labels, base_dir=images)))
    assert json.loads(out.read_text())["training"][0]["label"] == "../labels/case_a.nii.gz"
    entry = load_datalist(out, base_dir=images)[0]
    assert entry["label"] == str(labels / "case_a.nii.gz") and os.path.exists(entry["label"])


def test_make_datalist_errors(tmp_path, oblique):
    images, labels = make_dataset(tmp_path, oblique)
    (labels / "case_c.nii.gz").unlink()
    with pytest.raises(ValueError, match="no label.*case_c"):
        make_datalist(images, labels)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no volumes found"):
        make_datalist(tmp_path / "nothing")
    with pytest.raises(ValueError, match="leave no training"):
        make_datalist(images, val_fraction=0.9)
    with pytest.raises(ValueError, match="leave no training case among 4 volumes \\(2 validation \\+ 2 test\\)"):
        make_datalist(images, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\), got 1.0"):
        make_datalist(images, test_fraction=1.0)
    default = make_datalist(images)
    assert [e["image"] for e in default["training"]] == ["case_a.nii.gz", "case_b.nrrd", "case_c.mha", "case_d"]
    assert "validation" not in default and "test" not in default


def test_datalist_cli_writes_a_seeded_disjoint_test_list(tmp_path, capsys):
    """--test-fraction: a 'test' list (what cover_seg evaluate / inference read), disjoint from 'validation', the same
    for a seed, and the seed's validation list unchanged by it."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(10):
        save_nifti(images / f"case_{i}.nii.gz", np.random.rand(4, 4, 4).astype(np.float32))
    out = tmp_path / "list.json"
    datalist_main([str(images), "--output", str(out), "--val-fraction", "0.2", "--test-fraction", "0.3", "--seed", "1"])
    assert "wrote" in capsys.readouterr().out
    lists = {k: {e["image"] for e in v} for k, v in json.loads(out.read_text()).items()}
    assert {k: len(v) for k, v in lists.items()} == {"training": 5, "validation": 2, "test": 3}
    assert set.union(*lists.values()) == {f"case_{i}.nii.gz" for i in range(10)}  # disjoint and complete
    assert make_datalist(images, val_fraction=0.2, test_fraction=0.3, seed=1) == json.loads(out.read_text())
    without_test = make_datalist(images, val_fraction=0.2, seed=1)
    assert {e["image"] for e in without_test["validation"]} == lists["validation"]
    other_seed = make_datalist(images, val_fraction=0.2, test_fraction=0.3, seed=2)
    assert {e["image"] for e in other_seed["test"]} != lists["test"]
    assert load_datalist(out, "test", base_dir=images)[0]["image"].startswith(str(images))


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_sample_datalists_resolve(modality):
    folder = REPO / "sample_data" / modality
    training = load_datalist(REPO / "data_lists" / f"sample_{modality}.json", base_dir=folder)
    validation = load_datalist(REPO / "data_lists" / f"sample_{modality}.json", "validation", base_dir=folder)
    assert sorted(e["image"] for e in training) == sorted(str(p) for p in folder.glob("*.nii.gz"))
    assert len(validation) == 1 and validation[0] in training
