"""Prepare once into an on-disk store, train from it: the same samples as the RAM cache, the stream guarantees of
StreamDataset (workers, ranks, resume), nothing of the store held in the dataset, and one-line refusals of a store
that does not fit the run (settings, changed sources, missing or partial store)."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

import cover3d.data.stream as stream_module
from cover3d.data import StoreDataset, StreamDataset, StreamSampler
from cover3d.data.store import StoreIncompleteError, StoreOutdatedError, StoreSettingsError, read_manifest
from cover3d.errors import InputValueError, find_input_error
from cover3d.prepare import prepare_store

REPO = Path(__file__).resolve().parents[1]
CT_TRAIN = str(REPO / "bundles" / "cover_ct" / "train.json")
TINY_NET = {"channels": [4, 8, 8, 16, 16], "groups": [2, 2, 2, 1, 1]}
CROPS = {"patch_size": [16, 16, 16], "context_size": [24, 24, 24]}


def write_volume(path: Path, seed: int, shape=(30, 28, 24)) -> None:
    """A small CT-like volume in HU (2.5 mm voxels): noise around 0 HU with a bright block."""
    values = np.random.default_rng(seed).normal(0, 300, shape).astype(np.float32)
    values[5:12, 6:14, 4:10] += 800
    nib.save(nib.Nifti1Image(values, np.diag([2.5, 2.5, 2.5, 1.0])), str(path))


@pytest.fixture
def dataset(tmp_path) -> dict:
    """``{"dataset_dir", "datalist"}`` of 3 training and 1 validation tiny volumes under ``tmp_path/data``."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        write_volume(data / f"ct_{i}.nii.gz", seed=i)
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": f"ct_{i}.nii.gz"} for i in range(3)],
                                    "validation": [{"image": "ct_3.nii.gz"}]}))
    return {"dataset_dir": str(data), "datalist": str(datalist)}


def folder_state(folder: str) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")}


def bundle_parser(tmp_path: Path, **override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CT_TRAIN)
    parser.update({"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs"), **TINY_NET, **CROPS,
                   **override})
    return parser


def prepared(tmp_path: Path, dataset: dict, **override) -> str:
    store = str(tmp_path / "store")
    prepare_store(CT_TRAIN, store, workers=0, progress=False, **dataset, **override)
    return store


def refusal(parser: ConfigParser, key: str = "train#cache") -> str:
    """The message of the InputError that building ``key`` raises (MONAI wraps it in a RuntimeError), with its type."""
    with pytest.raises(Exception) as caught:
        parser.get_parsed_content(key)
    found = find_input_error(caught.value)
    assert found is not None, caught.value
    return f"{type(found).__name__}: {found}"


def first_items(dataset, count: int) -> list[dict]:
    return [dataset[i] for i in range(count)]


def assert_same_items(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        for key in ("image", "image_b", "ddf", "mask"):
            torch.testing.assert_close(torch.as_tensor(x[key]), torch.as_tensor(y[key]), rtol=0, atol=0)


def test_prepare_writes_the_cached_volumes_and_a_manifest_and_never_the_sources(tmp_path, dataset):
    before = folder_state(dataset["dataset_dir"])
    store = prepared(tmp_path, dataset)
    assert folder_state(dataset["dataset_dir"]) == before
    manifest = read_manifest(store)
    assert manifest["complete"] is True and manifest["failed"] == []
    assert manifest["settings"] == {"preset": "cover3d.transforms.ct_preprocessing", "pixdim": [2.5, 2.5, 2.5],
                                    "hu_window": [-1000, 1000], "in_channels": 1}
    cache = bundle_parser(tmp_path, **dataset).get_parsed_content("train#cache")  # the RAM cache of the same run
    assert len(manifest["entries"]) == len(cache._cache) == 3
    records = {r["sources"]["image"][0]["path"]: r for r in manifest["entries"]}
    for i, cached in enumerate(cache._cache):
        record = records[f"ct_{i}.nii.gz"]["arrays"]["image"]
        stored = np.load(Path(store) / "entries" / record["file"])
        np.testing.assert_array_equal(stored, cached["image"].numpy())
        assert record["shape"] == list(stored.shape) and record["spacing"] == [2.5, 2.5, 2.5]
        assert record["intensity"]["max"] == pytest.approx(float(stored.max()))
        assert records[f"ct_{i}.nii.gz"]["sources"]["image"][0]["size"] == os.path.getsize(
            Path(dataset["dataset_dir"]) / f"ct_{i}.nii.gz")


def test_prepare_in_two_worker_processes_writes_the_same_arrays(tmp_path, dataset):
    one = prepared(tmp_path, dataset)
    two = str(tmp_path / "store_two")
    summary = prepare_store(CT_TRAIN, two, workers=2, progress=False, **dataset)
    assert summary.prepared == 3
    for record in read_manifest(one)["entries"]:
        name = record["arrays"]["image"]["file"]
        np.testing.assert_array_equal(np.load(Path(one) / "entries" / name), np.load(Path(two) / "entries" / name))


def test_a_rerun_finishes_a_killed_prepare_and_redoes_a_changed_source(tmp_path, dataset):
    store = prepared(tmp_path, dataset)
    entries = sorted((Path(store) / "entries").glob("*.json"))
    entries[0].unlink()  # as if killed before this entry's record was written
    summary = prepare_store(CT_TRAIN, store, workers=0, progress=False, **dataset)
    assert (summary.prepared, summary.skipped) == (1, 2)
    write_volume(Path(dataset["dataset_dir"]) / "ct_1.nii.gz", seed=11, shape=(30, 28, 26))
    summary = prepare_store(CT_TRAIN, store, workers=0, progress=False, **dataset)
    assert (summary.prepared, summary.skipped) == (1, 2)
    assert (prepare_store(CT_TRAIN, store, workers=0, progress=False, **dataset).prepared) == 0


def test_a_bad_volume_is_listed_with_its_reason_and_the_others_are_stored(tmp_path, dataset, capsys):
    nib.save(nib.Nifti1Image(np.zeros((30, 28, 24), np.float32), np.diag([2.5, 2.5, 2.5, 1.0])),
             str(Path(dataset["dataset_dir"]) / "ct_0.nii.gz"))  # constant: refused by CheckVolumed
    with pytest.raises(InputValueError, match=r"1 of 3 entries failed .* python -m cover3d.prepare"):
        prepared(tmp_path, dataset)
    printed = capsys.readouterr().out
    assert "2 entries ready" in printed and "failed: " in printed and "ct_0.nii.gz: " in printed
    manifest = read_manifest(tmp_path / "store")
    assert manifest["complete"] is False and len(manifest["entries"]) == 2
    assert manifest["failed"][0]["source"].endswith("ct_0.nii.gz") and "constant" in manifest["failed"][0]["reason"]
    message = refusal(bundle_parser(tmp_path, **dataset, store=str(tmp_path / "store")))
    assert re.match(r"StoreIncompleteError: .*lacks 1 of 3 .*ct_0.nii.gz; it failed in prepare: .*constant", message), message


def test_prepare_refuses_a_store_inside_the_dataset_folder_and_other_settings(tmp_path, dataset):
    with pytest.raises(InputValueError, match="inside the dataset folder"):
        prepare_store(CT_TRAIN, Path(dataset["dataset_dir"]) / "store", workers=0, **dataset)
    store = prepared(tmp_path, dataset)
    with pytest.raises(InputValueError, match=r"prepared with pixdim \[2.5, 2.5, 2.5\], this config has pixdim \[2, 2, 2\]"):
        prepare_store(CT_TRAIN, store, workers=0, pixdim=[2, 2, 2], **dataset)


def test_the_store_gives_the_samples_of_the_ram_cache(tmp_path, dataset):
    store = prepared(tmp_path, dataset)
    cached = bundle_parser(tmp_path, **dataset).get_parsed_content("train#dataset")
    stored = bundle_parser(tmp_path, **dataset, store=store).get_parsed_content("train#dataset")
    assert isinstance(stored.dataset, StoreDataset)
    assert_same_items(first_items(stored, 5), first_items(cached, 5))


def loader_batches(dataset, workers: int, count: int, iteration: int = 0) -> list[dict]:
    sampler = StreamSampler(batch_size=2)
    sampler.attach(SimpleNamespace(state=SimpleNamespace(iteration=iteration)))
    loader = DataLoader(dataset, sampler=sampler, batch_size=2, num_workers=workers)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            return batches


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        for key in ("image", "image_b", "ddf", "mask"):
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def test_the_stream_from_the_store_is_the_same_with_0_and_2_workers_and_resumes_exactly(tmp_path, dataset):
    store = prepared(tmp_path, dataset)
    stream = bundle_parser(tmp_path, **dataset, store=store).get_parsed_content("train#dataset")
    without = loader_batches(stream, workers=0, count=4)
    assert_same_batches(loader_batches(stream, workers=2, count=4), without)
    assert_same_batches(loader_batches(stream, workers=2, count=2, iteration=2), without[2:])  # resumed at 2
    assert not torch.equal(without[0]["image"], without[1]["image"])


def test_two_ranks_draw_different_samples_that_together_are_the_single_process_stream(tmp_path, dataset, monkeypatch):
    store = prepared(tmp_path, dataset)
    stream = bundle_parser(tmp_path, **dataset, store=store).get_parsed_content("train#dataset")
    monkeypatch.setattr(stream_module.idist, "get_world_size", lambda: 2)
    ranks = []
    for rank in (0, 1):
        monkeypatch.setattr(stream_module.idist, "get_rank", lambda rank=rank: rank)
        sampler = StreamSampler(batch_size=1)
        ranks.append([next(p for i, p in enumerate(iter(sampler)) if i == k) for k in range(3)])
    assert ranks == [[0, 2, 4], [1, 3, 5]]
    samples = [[stream[p] for p in positions] for positions in ranks]
    assert not any(torch.equal(a["image"], b["image"]) for a, b in zip(*samples))
    assert_same_items([samples[0][0], samples[1][0], samples[0][1]], first_items(stream, 3))


def test_the_dataset_holds_paths_not_the_store(tmp_path, dataset):
    store = prepared(tmp_path, dataset)
    stored = bundle_parser(tmp_path, **dataset, store=store).get_parsed_content("train#cache")
    cached = bundle_parser(tmp_path, **dataset).get_parsed_content("train#cache")
    store_bytes = sum(p.stat().st_size for p in Path(store).glob("entries/*.npy"))
    first_items(stored, 3)
    state = {k: v for k, v in vars(stored).items() if k != "transform"}  # the transforms hold no volume
    assert len(pickle.dumps(state)) < store_bytes / 100  # what a DataLoader worker receives besides the transforms
    assert len(pickle.dumps({k: v for k, v in vars(cached).items() if k != "transform"})) > store_bytes  # RAM cache
    assert isinstance(stored[0]["image"], torch.Tensor) and isinstance(stored._transform.__self__, StoreDataset)
    item = dict(stored.data[0])
    item.update({k: np.load(p, mmap_mode="r") for k, p in stored.files[0].items()})
    assert all(isinstance(v, np.memmap) for k, v in item.items() if k in stored.files[0])


def test_a_store_prepared_with_other_settings_is_refused_naming_the_setting(tmp_path, dataset):
    store = prepared(tmp_path, dataset)
    message = refusal(bundle_parser(tmp_path, **dataset, store=store, hu_window=[-500, 500]))
    assert re.match(r"StoreSettingsError: store .* was prepared with hu_window \[-1000, 1000\], this run has hu_window "
                    r"\[-500, 500\]: ", message), message
    message = refusal(bundle_parser(tmp_path, **dataset, store=store, in_channels=2))
    assert "prepared with in_channels 1, this run has in_channels 2" in message, message
    mri = ConfigParser()
    mri.read_config(str(REPO / "bundles" / "cover_mri" / "train.json"))
    mri.update({**dataset, **TINY_NET, **CROPS, "store": store, "pixdim": [2.5, 2.5, 2.5]})
    message = refusal(mri)
    assert ("prepared with preset 'cover3d.transforms.ct_preprocessing', this run has preset "
            "'cover3d.transforms.mri_preprocessing'") in message, message


def test_a_source_changed_since_prepare_is_reported(tmp_path, dataset):
    store = prepared(tmp_path, dataset)
    write_volume(Path(dataset["dataset_dir"]) / "ct_2.nii.gz", seed=7, shape=(30, 28, 20))
    message = refusal(bundle_parser(tmp_path, **dataset, store=store))
    assert re.match(r"StoreOutdatedError: \S+ct_2.nii.gz changed since the store was prepared \(size \d+ -> \d+ bytes\): "
                    r"update the store with: python -m cover3d.prepare ", message), message


def test_a_missing_or_partial_store_names_the_prepare_command(tmp_path, dataset, monkeypatch):
    store = str(tmp_path / "store")
    monkeypatch.setattr("sys.argv", ["monai/bundle/__main__.py", "run", "--config_file", CT_TRAIN, "--store", store])
    command = f"python -m cover3d.prepare --config_file {CT_TRAIN} --store {store}"
    message = refusal(bundle_parser(tmp_path, **dataset, store=store))
    assert message == f"StoreIncompleteError: store {store} not found: prepare it with: {command}"
    prepared(tmp_path, dataset)
    next(Path(store).glob("entries/*.npy")).unlink()
    message = refusal(bundle_parser(tmp_path, **dataset, store=store))
    assert re.match(r"StoreIncompleteError: store \S+ lacks 1 of 3 entries of the datalist \(first: \S+ct_\d.nii.gz\): "
                    "finish it with: ", message) and message.endswith(command), message
    (Path(store) / "manifest.json").unlink()
    message = refusal(bundle_parser(tmp_path, **dataset, store=store))
    assert message.endswith(f"has no manifest.json (prepare never finished): prepare it with: {command}"), message


class CropOnlyVolume:
    """A channel-first volume that can only be read by slicing (as a memory map is read); records each box read."""

    def __init__(self, values: np.ndarray) -> None:
        self.values, self.shape, self.ndim, self.boxes = values, values.shape, values.ndim, []

    def __getitem__(self, box):
        self.boxes.append(box)
        return self.values[box]


def test_the_pair_transform_reads_only_its_context_crop():
    from cover3d.transforms import CoverPair

    values = np.random.default_rng(0).random((1, 40, 36, 30), dtype=np.float32)
    lazy = CropOnlyVolume(values)
    pair = CoverPair(patch_size=16, context_size=24).set_random_state(seed=5)
    from_crops = pair(lazy)
    from_tensor = CoverPair(patch_size=16, context_size=24).set_random_state(seed=5)(torch.from_numpy(values))
    for a, b in zip(from_crops, from_tensor, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    (box,) = lazy.boxes
    assert [s.stop - s.start for s in box[1:]] == [24, 24, 24]  # one context-sized read, not the volume
