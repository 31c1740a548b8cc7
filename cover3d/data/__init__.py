"""Data I/O for cover3d: SimpleITK reader, datalists, pre-flight checks, the on-disk store of preprocessed volumes,
the resumable training-sample stream, inter-subject pseudo-pairs."""

from cover3d.data.checks import label_shape_problem, preflight_check, volume_problems
from cover3d.data.datalists import datalist_fingerprint, find_volumes, inference_datalist, load_datalist, make_datalist
from cover3d.data.field_io import read_displacement_field, read_displacement_field_transform, write_displacement_field
from cover3d.data.pseudo_pairs import InterSubjectPseudoPairs, MixedPairs
from cover3d.data.readers import VOLUME_SUFFIXES, SimpleITKReader, dicom_series_files, volume_suffix
from cover3d.data.store import StoreIncompleteError, StoreOutdatedError, StoreSettingsError, open_store
from cover3d.data.store_dataset import StoreDataset, preprocessed_volumes
from cover3d.data.stream import StreamDataset, StreamSampler

__all__ = [
    "VOLUME_SUFFIXES",
    "InterSubjectPseudoPairs",
    "MixedPairs",
    "SimpleITKReader",
    "StoreDataset",
    "StoreIncompleteError",
    "StoreOutdatedError",
    "StoreSettingsError",
    "StreamDataset",
    "StreamSampler",
    "datalist_fingerprint",
    "dicom_series_files",
    "find_volumes",
    "inference_datalist",
    "label_shape_problem",
    "load_datalist",
    "make_datalist",
    "open_store",
    "preflight_check",
    "preprocessed_volumes",
    "read_displacement_field",
    "read_displacement_field_transform",
    "volume_problems",
    "volume_suffix",
    "write_displacement_field",
]
