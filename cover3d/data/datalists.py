"""Writing and loading MONAI decathlon-style datalists (``{"training": [{"image": relpath}, ...]}``).

The command line is :mod:`cover3d.data.datalist` (a module of its own, which ``cover3d.data`` does not import, so
``python -m cover3d.data.datalist`` runs without runpy's "found in sys.modules" warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import SimpleITK as sitk
from monai.data import load_decathlon_datalist
from monai.utils import ensure_tuple

from cover3d.data.readers import VOLUME_SUFFIXES, volume_suffix
from cover3d.errors import InputFileNotFoundError, InputValueError, read_json_object

__all__ = ["find_volumes", "inference_datalist", "load_datalist", "make_datalist"]

# keys whose relative paths load_decathlon_datalist always joins with the base dir
PATH_KEYS = ("image", "label")


def find_volumes(folder: str | os.PathLike) -> dict[str, Path]:
    """Volumes directly in ``folder`` by case name: files with a volume suffix (``.nii``, ``.nii.gz``,
    ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``; case = name without suffix) and sub-folders holding one DICOM
    series (case = folder name). Other files and sub-folders are ignored.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: two volumes share a case name, or a sub-folder holds several DICOM series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileNotFoundError(f"not a folder: {folder}")
    volumes: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = volume_suffix(path)
        if path.is_file() and suffix:
            case = path.name[: -len(suffix)]
        elif path.is_dir() and _dicom_series_count(path):
            case = path.name
        else:
            continue
        if case in volumes:
            raise InputValueError(f"{folder}: two volumes named '{case}': {volumes[case].name} and {path.name}")
        volumes[case] = path
    return volumes


def _dicom_series_count(folder: Path) -> int:
    count = len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if count > 1:
        raise InputValueError(f"{folder} holds {count} DICOM series: put each series in its own folder")
    return count


def make_datalist(
    folder: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    base_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    image_key: str = "image",
    label_key: str = "label",
    test_fraction: float = 0.0,
) -> dict[str, list[dict[str, str]]]:
    """Decathlon-style datalist of the volumes in ``folder`` (see :func:`find_volumes`).

    Args:
        folder: folder of images.
        labels: optional folder of labels, matched to images by case name (the label may use another suffix).
        base_dir: paths are written relative to this folder (default: ``folder``); pass the same folder as
            ``base_dir`` to :func:`load_datalist`.
        val_fraction: fraction of cases moved, at random, from ``"training"`` to ``"validation"`` (at least
            one when > 0; at least one case stays in training).
        seed: seed of the random choices (validation first, then test among the remaining cases, so adding a test
            list leaves the validation list of a seed unchanged).
        image_key: key of the image paths.
        label_key: key of the label paths.
        test_fraction: fraction of all cases moved, at random, to ``"test"`` (at least one when > 0), disjoint
            from ``"validation"``; the list cover_seg's evaluate.json and inference.json read by default.

    Returns:
        ``{"training": [{image_key: relpath[, label_key: relpath]}, ...]}`` sorted by case name, plus
        ``"validation"`` when ``val_fraction > 0`` and ``"test"`` when ``test_fraction > 0``.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no volumes, images without a label, or an impossible validation fraction.
    """
    images = find_volumes(folder)
    if not images:
        suffixes = ", ".join(VOLUME_SUFFIXES)
        raise InputValueError(f"no volumes found in {folder} (files {suffixes} or DICOM series folders)")
    label_paths = find_volumes(labels) if labels is not None else {}
    if labels is not None and (unlabelled := sorted(set(images) - set(label_paths))):
        cases = ", ".join(unlabelled)
        raise InputValueError(f"{len(unlabelled)} image(s) in {folder} have no label in {labels}: {cases}")
    base = os.path.abspath(base_dir if base_dir is not None else folder)

    def relative(path: Path) -> str:
        return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()

    entries = {
        case: {image_key: relative(path), **({label_key: relative(label_paths[case])} if labels is not None else {})}
        for case, path in images.items()
    }
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise InputValueError(f"{name} must be in [0, 1), got {fraction}")
    n_val, n_test = (max(1, round(f * len(entries))) if f > 0 else 0 for f in (val_fraction, test_fraction))
    if n_val + n_test >= len(entries):
        raise InputValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} leave no training case "
                              f"among {len(entries)} volumes ({n_val} validation + {n_test} test)")
    rng = random.Random(seed)
    val_cases = set(rng.sample(sorted(entries), n_val))
    test_cases = set(rng.sample(sorted(set(entries) - val_cases), n_test))
    datalist = {"training": [e for case, e in entries.items() if case not in val_cases | test_cases]}
    for key, cases in (("validation", val_cases), ("test", test_cases)):
        if cases:
            datalist[key] = [e for case, e in entries.items() if case in cases]
    return datalist


def load_datalist(
    path: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict]:
    """Entries of list ``key`` of a decathlon-style datalist, ``image``/``label`` paths joined with ``base_dir``.

    Wraps ``monai.data.load_decathlon_datalist`` (``base_dir`` defaults to the JSON file's folder).

    Raises:
        FileNotFoundError: the JSON file is missing, or ``image``/``label`` files it references (all listed).
        ValueError: the file is not a JSON object, or ``key`` is missing, not a list or empty.
    """
    path = Path(path)
    content = read_json_object(path, "datalist file")
    if key not in content:
        raise InputValueError(f"datalist {path} has no '{key}' list (found: {', '.join(map(repr, content))})")
    if not isinstance(content[key], list) or not content[key]:
        raise InputValueError(f"datalist {path}: '{key}' must be a non-empty list of entries, got {content[key]!r}")
    entries = [
        {k: _normalised(v) if k in PATH_KEYS else v for k, v in entry.items()}
        for entry in load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    ]
    missing = [
        f"{p} ('{k}' of entry {i})"
        for i, entry in enumerate(entries)
        for k in PATH_KEYS
        if k in entry
        for p in ensure_tuple(entry[k])
        if not os.path.exists(p)
    ]
    if missing:
        base = base_dir if base_dir is not None else path.parent
        where = f"datalist {path} ('{key}', paths relative to {base})"
        if len(missing) == 1:
            raise InputFileNotFoundError(f"{where} references a missing file: {missing[0]}")
        raise InputFileNotFoundError(f"{where} references {len(missing)} missing files:\n  " + "\n  ".join(missing))
    return entries


def inference_datalist(
    image: str | os.PathLike | None,
    datalist: str | os.PathLike,
    key: str = "test",
    base_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """The volumes an inference run segments: ``[{"image": image}]`` for one volume (a bundle's ``--image``; then
    ``datalist``, ``key`` and ``base_dir`` are not read), else :func:`load_datalist` ``(datalist, key, base_dir)``.

    Raises:
        FileNotFoundError: ``image`` does not exist (or, without it, see :func:`load_datalist`).
    """
    if image is None:
        return load_datalist(datalist, key, base_dir=base_dir)
    if not os.path.exists(image):
        raise InputFileNotFoundError(f"input volume not found: --image {image}")
    return [{"image": os.path.normpath(os.path.abspath(image))}]


def _normalised(paths: str | list[str]) -> str | list[str]:
    """``paths`` with ``..`` and ``.`` resolved textually (``images/../labels/x`` -> ``labels/x``)."""
    return [os.path.normpath(p) for p in paths] if isinstance(paths, list) else os.path.normpath(paths)


def datalist_fingerprint(entries: list[dict], base_dir: str | os.PathLike) -> str:
    """A short identity of the training data, kept in every checkpoint so that a resume over other data is refused.

    Each entry of ``entries`` (as :func:`load_datalist` returns them) is described by its keys and values, with each
    ``image``/``label`` path written relative to ``base_dir`` (the dataset folder) together with its size in bytes
    (a folder, e.g. a DICOM series: the total size of its files). The sorted descriptions are hashed (SHA-256): the
    same files listed in any order, and the dataset folder moved or mounted elsewhere, give the same fingerprint;
    another folder, a file added, removed, renamed or replaced by one of another size give another. Volumes are not
    read (cheap for thousands of files).

    Returns:
        ``"<n> entries, sha256 <first 16 hex digits>"``.
    """
    base = os.path.abspath(base_dir)

    def describe(path: str) -> list:
        full = Path(path)
        files = [p for p in full.iterdir() if p.is_file()] if full.is_dir() else [full] if full.is_file() else []
        return [os.path.relpath(os.path.abspath(path), base), sum(p.stat().st_size for p in files)]

    described = sorted(
        json.dumps(
            {k: [describe(p) for p in ensure_tuple(v)] if k in PATH_KEYS else v for k, v in entry.items()},
            sort_keys=True, default=str,
        )
        for entry in entries
    )
    digest = hashlib.sha256("\n".join(described).encode()).hexdigest()[:16]
    return f"{len(entries)} entries, sha256 {digest}"
