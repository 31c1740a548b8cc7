"""Storage format of the on-disk store: uncompressed ``.npy`` memory maps vs blosc2 (as nnU-Net v2 stores its data).

    python benchmarks/store_format.py [--quick] [--reps 30]

One preprocessed volume: the embedded CT sample ``sample_data/ct/ts_example_ct.nii.gz`` through
``ct_preprocessing`` at 1.5 mm (HU window [-1000, 1000] -> [0, 1], foreground crop; float32 (1, X, Y, Z)). Each format
writes it once, then reads ``--reps`` random context crops of each size (72^3: the bundles' default context; 144^3:
the GPU-scale context), the formats interleaved crop by crop, single-threaded (as one DataLoader worker reads). The
files were just written, so the page cache is warm: this is the steady state of a store that fits in RAM; a store
read from disk moves the bytes of the "size on disk" column per whole volume. Dependency weight: the installed size
of the format's package and of the packages it requires that cover3d does not already install (zarr is not
installed here and is not measured: it is a larger dependency than blosc2, which it uses for compression).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import MiB, add_common_arguments, machine_line, markdown_table, save_table  # noqa: E402

from monai.transforms import Compose  # noqa: E402

from cover3d.transforms import ct_preprocessing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOLUME = REPO / "sample_data" / "ct" / "ts_example_ct.nii.gz"
CROPS = (72, 144)
CHUNKS = (1, 64, 64, 64)
COVER3D_REQUIRES = {"torch", "monai", "nibabel", "simpleitk", "numpy", "pyyaml", "pytorch-ignite", "fire",
                    "tensorboard", "matplotlib", "scipy"}  # setup.cfg install_requires


def installed_mib(package: str, seen: set[str] | None = None) -> tuple[float, list[str]]:
    """Installed size (MiB) of ``package`` and of its requirements outside cover3d's own, and their names."""
    seen = set() if seen is None else seen
    name = package.lower().replace("_", "-")
    if name in seen or name in COVER3D_REQUIRES:
        return 0.0, []
    seen.add(name)
    dist = importlib.metadata.distribution(package)
    size = sum(f.size or 0 for f in dist.files or []) / MiB
    names = [name]
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra, or another Python version's requirement
        child_size, child_names = installed_mib(requirement.name, seen)
        size, names = size + child_size, names + child_names
    return size, names


class Npy:
    name = "npy (uncompressed, memory map)"
    suffix = ".npy"

    def write(self, path: Path, volume: np.ndarray) -> None:
        np.save(path, volume)

    def open(self, path: Path):
        return np.load(path, mmap_mode="r")

    def crop(self, handle, box: tuple[slice, ...]) -> np.ndarray:
        return np.array(handle[box])


class Blosc2:
    def __init__(self, codec: str, clevel: int) -> None:
        import blosc2

        self.blosc2, self.codec, self.clevel = blosc2, codec, clevel
        self.name = f"blosc2 {codec.lower()} clevel {clevel}, chunks 64^3"
        self.suffix = f".{codec.lower()}{clevel}.b2nd"
        blosc2.set_nthreads(1)

    def write(self, path: Path, volume: np.ndarray) -> None:
        cparams = {"codec": getattr(self.blosc2.Codec, self.codec), "clevel": self.clevel}
        self.blosc2.asarray(volume, urlpath=str(path), mode="w", chunks=CHUNKS, cparams=cparams)

    def open(self, path: Path):
        return self.blosc2.open(str(path), mode="r")

    def crop(self, handle, box: tuple[slice, ...]) -> np.ndarray:
        return handle[box]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 30)
    item = Compose(ct_preprocessing("image", pixdim=(1.5, 1.5, 1.5)))({"image": str(VOLUME)})
    volume = np.ascontiguousarray(item["image"].numpy())
    print(f"{machine_line(args)}\nvolume {VOLUME.name} at 1.5 mm: shape {volume.shape}, {volume.nbytes / MiB:.1f} MiB")
    formats = [Npy()]
    try:
        formats += [Blosc2("ZSTD", 8), Blosc2("LZ4", 5)]
    except ImportError:
        print("blosc2 is not installed: only npy measured")
    rng = np.random.default_rng(0)
    times = {(f.name, c): [] for f in formats for c in CROPS}
    facts = {}
    with tempfile.TemporaryDirectory() as folder:
        handles = {}
        for f in formats:
            path = Path(folder) / f"volume{f.suffix}"
            start = time.perf_counter()
            f.write(path, volume)
            facts[f.name] = {"write_s": time.perf_counter() - start, "bytes": path.stat().st_size}
            handles[f.name] = (f, f.open(path))
            np.testing.assert_array_equal(f.crop(handles[f.name][1], (slice(None),) * 4), volume)  # lossless
        for _ in range(reps):
            for size in CROPS:
                corner = [int(rng.integers(0, max(n - size, 0) + 1)) for n in volume.shape[1:]]
                box = (slice(None), *(slice(c, c + size) for c in corner))
                for f, handle in handles.values():
                    start = time.perf_counter()
                    f.crop(handle, box)
                    times[(f.name, size)].append(time.perf_counter() - start)
    rows = []
    for f in formats:
        package = "numpy" if isinstance(f, Npy) else "blosc2"
        extra_mib, extra = installed_mib(package)
        weight = "none (numpy)" if not extra else f"{len(extra)} packages, {extra_mib:.0f} MiB ({', '.join(extra[:4])}, ...)"
        rows.append([f.name, f"{facts[f.name]['bytes'] / MiB:.1f}", f"{volume.nbytes / facts[f.name]['bytes']:.2f}x",
                     f"{facts[f.name]['write_s']:.2f}",
                     *(f"{1000 * statistics.median(times[(f.name, c)]):.1f}" for c in CROPS), weight])
    headers = ["format", "size on disk (MiB)", "compression", "write (s)",
               *(f"read a {c}^3 crop (ms, median)" for c in CROPS), "extra dependencies (installed size)"]
    print(markdown_table(headers, rows))
    save_table(__file__, args, headers, rows)


if __name__ == "__main__":
    main()
