"""Data I/O for cover3d: SimpleITK reader, datalists, pre-flight checks."""

from cover3d.data.readers import SimpleITKReader, VOLUME_SUFFIXES, dicom_series_files, volume_suffix
from cover3d.data.checks import preflight_check
from cover3d.data.datalist import find_volumes, load_datalist, make_datalist

__all__ = [
    "SimpleITKReader",
    "VOLUME_SUFFIXES",
    "dicom_series_files",
    "find_volumes",
    "load_datalist",
    "make_datalist",
    "preflight_check",
    "volume_suffix",
]
