"""cover3d vs classical registration (SimpleITK) on held-out volumes with known synthetic fields.

    python benchmarks/classical_registration.py --bundle bundles/cover_ct [--pairs N] [--quick] [--weights W]
        [--volumes V ...] [--threads 1] [--device cpu|cuda] [--output F.csv]

Pairs: the held-out volumes (default: shared-data volumes not in the embedded sample, see ``HELD_OUT``) are
preprocessed with the bundle's preprocessing and turned into ``--pairs`` pairs by a copy of the bundle's
``CoverPaird`` seeded with 2024 (as ``evaluate.json``): view a = appearance-augmented patch, view b = deformed patch,
true backward field psi (``view_b(p) = view_a(p + psi(p))``) and validity mask. Every method estimates the same
backward field: fixed = view b, moving = view a (an ITK transform maps fixed points to moving points).

Methods (SimpleITK runs on images with the patch's voxel spacing; its fields are converted to voxels with
:func:`cover3d.data.field_io.field_from_itk_image`):

- ``zero field``: the identity, for scale.
- ``cover3d``: the bundle's ``CoverNet`` with ``--weights`` (default ``<bundle>/models/model.pt``; a training checkpoint
  such as ``models/checkpoint_<epoch>.pt`` works too), one forward.
- ``affine (MI)``: ``AffineTransform``, Mattes mutual information (32 bins, 10% random samples), regular-step
  gradient descent, 3 levels (shrink 4/2/1, smoothing 2/1/0 voxels), geometric centre initialisation.
- ``demons``: ``FastSymmetricForcesDemonsRegistrationFilter`` after histogram matching of the moving view to the
  fixed one, 3 levels (shrink 4/2/1, smoothing 2/1/0 voxels, 60/40/20 iterations), field smoothing sigma 1.5 voxels.
  (Tried: diffeomorphic demons, 4 levels, sigma 1-2.5, more iterations, affine initialisation: none was better on
  these pairs; demons matches intensities, and view a's appearance augmentation is what it cannot absorb.)
- ``affine + B-spline (MI, LBFGSB)``: the affine above, then a cubic B-spline (mesh 4 per axis) on top of it,
  Mattes MI, LBFGSB (50 iterations per level), same 3 levels. (LBFGSB cannot be combined with SimpleITK's B-spline
  mesh refinement: its bounds keep the first level's size; without the affine stage the B-spline alone was
  clearly worse.)

Metrics per pair over valid voxels: mean end-point error (voxels, mm), fraction within 1 voxel, folding fraction
(``det J <= 0``), wall seconds (cover3d: after one untimed warm-up forward). The table gives the means over pairs;
the CSV has one row per pair and method. ``--quick``: 2 pairs, half the iterations. Threads: ``--threads`` for
torch and ITK alike.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import fmt_s, markdown_table, shared_data  # noqa: E402

from cover3d.data.field_io import field_from_itk_image, to_itk_image  # noqa: E402
from cover3d.engine import fixed_pairs, latest_checkpoint  # noqa: E402
from cover3d.engine.field_inference import predict_field  # noqa: E402
from cover3d.metrics import endpoint_error, folding_fraction, fraction_within_tolerance  # noqa: E402
from cover3d.networks.weights import load_weights_only, read_state_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = {  # relative to the shared data folder; none of them is in sample_data/
    "cover_ct": ["ct_samples/images/invesalius_cranium_ct.nii.gz"],
    "cover_mri": [
        "mri_samples/images/chris_t1.nii.gz",
        "mri_samples/images/oasis_vxm_t1.nii.gz",
        "mri_samples/images/vs_seg_001_t1gd.nii.gz",
    ],
}
PAIR_SEED = 2024
LEVELS = {"shrink": [4, 2, 1], "sigmas": [2.0, 1.0, 0.0]}  # image pyramid of every SimpleITK method (voxels)


def grid_of(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def displacement_of(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    return sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, *grid_of(reference))


def mutual_information_method() -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(LEVELS["shrink"])
    method.SetSmoothingSigmasPerLevel(LEVELS["sigmas"])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def affine_registration(fixed: sitk.Image, moving: sitk.Image, iterations: int) -> sitk.Transform:
    transform = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    method = mutual_information_method()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform


def affine(fixed: sitk.Image, moving: sitk.Image, quick: bool) -> sitk.Image:
    return displacement_of(affine_registration(fixed, moving, 50 if quick else 100), fixed)


def affine_bspline(fixed: sitk.Image, moving: sitk.Image, quick: bool) -> sitk.Image:
    initial = affine_registration(fixed, moving, 50 if quick else 100)
    bspline = sitk.BSplineTransformInitializer(fixed, [4, 4, 4], order=3)
    method = mutual_information_method()
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5, numberOfIterations=25 if quick else 50, maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=1000, costFunctionConvergenceFactor=1e7,
    )  # fmt: skip
    method.SetMovingInitialTransform(initial)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    return displacement_of(sitk.CompositeTransform([initial, bspline]), fixed)  # B-spline first, then the affine


def demons(fixed: sitk.Image, moving: sitk.Image, quick: bool) -> sitk.Image:
    moving = sitk.HistogramMatching(moving, fixed, numberOfHistogramLevels=256, numberOfMatchPoints=7)
    iterations = [30, 20, 10] if quick else [60, 40, 20]
    field = None
    for shrink, sigma, steps in zip(LEVELS["shrink"], LEVELS["sigmas"], iterations):
        smoothed = [
            sitk.SmoothingRecursiveGaussian(image, [sigma * s for s in image.GetSpacing()]) if sigma else image
            for image in (fixed, moving)
        ]
        level = [sitk.Shrink(image, [shrink] * 3) for image in smoothed]
        if field is None:
            initial = sitk.Image(level[0].GetSize(), sitk.sitkVectorFloat64)
            initial.CopyInformation(level[0])
        else:  # displacements are physical (mm): resampling onto the finer grid needs no rescaling
            initial = sitk.Resample(field, level[0], sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        registration = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        registration.SetNumberOfIterations(steps)
        registration.SmoothDisplacementFieldOn()
        registration.SetStandardDeviations(1.5)
        field = registration.Execute(level[0], level[1], initial)
    return field


SITK_METHODS: dict[str, Callable[[sitk.Image, sitk.Image, bool], sitk.Image]] = {
    "affine (MI)": affine,
    "demons": demons,
    "affine + B-spline (MI, LBFGSB)": affine_bspline,
}


METHODS = ("zero field", "cover3d", *SITK_METHODS)
METRICS = ("epe_vox", "epe_mm", "within_1vox", "folding", "seconds")  # CSV columns after pair, volume, method


def estimate(method: str, pair: dict, network: torch.nn.Module, grid: np.ndarray, quick: bool) -> torch.Tensor:
    """Backward field ``(3, *S)`` (voxels) of ``pair`` estimated by ``method``; SimpleITK runs on ``grid`` (affine)."""
    if method == "zero field":
        return torch.zeros_like(pair["ddf"])
    if method == "cover3d":
        return predict_field(network, pair["image"][None], pair["image_b"][None])[0].cpu()
    fixed, moving = to_itk_image(pair["image_b"], grid), to_itk_image(pair["image"], grid)
    return field_from_itk_image(SITK_METHODS[method](fixed, moving, quick))[0]


def load_bundle(bundle: Path, weights: Path, device: torch.device):
    """The bundle's config and its ``CoverNet`` with ``weights`` (a state dict, or a training checkpoint with one)."""
    config = ConfigParser()
    config.read_config(str(bundle / "train.json"))
    config["bundle_root"] = str(bundle)
    network = config.get_parsed_content("network_def").to(device).eval()
    network.load_state_dict(read_state_dict(weights))
    return config, network


def describe_weights(weights: Path) -> str:
    """Path, time written and, from the file itself or the newest checkpoint next to it, the training iterations."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(weights.stat().st_mtime))
    text = f"weights {weights} (written {stamp})"
    source = weights if "trainer" in load_weights_only(weights) else None
    source = source or latest_checkpoint(weights.parent)
    if source is not None:
        trainer = load_weights_only(source)["trainer"]
        text += f"; trained {trainer['iteration']} iterations ({trainer['epoch_length']} per epoch, from {source.name})"
    return text


def evaluate(field: torch.Tensor, pair: dict, spacing: list[float]) -> dict[str, float]:
    pred, true, mask = field[None].float().cpu(), pair["ddf"][None], pair["mask"][None]
    return {
        "epe_vox": endpoint_error(pred, true, mask).item(),
        "epe_mm": endpoint_error(pred, true, mask, spacing=spacing).item(),
        "within_1vox": fraction_within_tolerance(pred, true, 1.0, mask).item(),
        "folding": folding_fraction(pred, mask).item(),
    }


def summary_table(rows: list[dict]) -> str:
    """Markdown table of the per-pair rows (``method`` and the ``METRICS``, numbers or numeric strings as read back
    from the CSV): the mean over pairs per method."""
    table = []
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        mine = [r for r in rows if r["method"] == method]
        mean = {key: float(np.mean([float(r[key]) for r in mine])) for key in METRICS}
        table.append([method, f"{mean['epe_vox']:.2f}", f"{mean['epe_mm']:.2f}", f"{100 * mean['within_1vox']:.1f}",
                      f"{100 * mean['folding']:.3f}", fmt_s(mean["seconds"])])  # fmt: skip
    headers = ["method", "EPE (voxels)", "EPE (mm)", "EPE <= 1 voxel (%)", "folding (%)", "seconds / pair"]
    return markdown_table(headers, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="pretraining bundle folder, e.g. bundles/cover_ct")
    parser.add_argument("--weights", default=None, help="state dict or checkpoint (default <bundle>/models/model.pt)")
    parser.add_argument("--pairs", type=int, default=None, help="number of pairs (default 8; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 pairs and half the registration iterations")
    parser.add_argument("--volumes", nargs="+", default=None, help="held-out volumes (default: the bundle's HELD_OUT)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ITK")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="CSV (default: benchmarks/results/<script>_<bundle>.csv)")
    args = parser.parse_args()

    bundle = Path(args.bundle).resolve()
    if not (bundle / "train.json").is_file():
        sys.exit(f"error: {bundle} is not a pretraining bundle folder (no train.json)")
    weights = Path(args.weights) if args.weights else bundle / "models" / "model.pt"
    if not weights.is_file():
        train = f"python -m monai.bundle run --config_file {bundle / 'train.json'}"
        sys.exit(f"error: no weights at {weights}: train the bundle first ({train})")
    if args.volumes:
        volumes = [Path(v) for v in args.volumes]
    elif bundle.name in HELD_OUT:
        if not shared_data().is_dir():
            print(f"skipped: shared data folder {shared_data()} not found (set COVER3D_SHARED_DATA or pass --volumes)")
            return
        volumes = [shared_data() / v for v in HELD_OUT[bundle.name]]
    else:
        sys.exit(f"error: no default held-out volumes for bundle '{bundle.name}': pass --volumes")
    missing = [str(v) for v in volumes if not v.is_file()]
    if missing:
        sys.exit(f"error: volume(s) not found: {', '.join(missing)}")

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    device = torch.device(args.device)
    num_pairs = args.pairs or (2 if args.quick else 8)
    config, network = load_bundle(bundle, weights, device)
    spacing = [float(s) for s in config["pixdim"]]
    preprocessing = Compose(config.get_parsed_content("preprocessing"))
    prepared = [preprocessing({"image": str(v)}) for v in volumes]
    pairs = fixed_pairs(prepared, config.get_parsed_content("pair_transform"), num_pairs, seed=PAIR_SEED)
    print(f"bundle {bundle}; {describe_weights(weights)}")
    print(f"{num_pairs} pairs (seed {PAIR_SEED}) of patch {tuple(pairs[0]['ddf'].shape[1:])} at {spacing} mm from: "
          + ", ".join(f"{v.name} {tuple(p['image'].shape[1:])}" for v, p in zip(volumes, prepared)))  # fmt: skip
    print(f"device {device}, {args.threads} thread(s), load avg at start {os.getloadavg()[0]:.2f}\n")

    grid = np.diag([*spacing, 1.0])  # the patch's grid; its position does not matter to any method
    predict_field(network, pairs[0]["image"][None], pairs[0]["image_b"][None])  # warm-up, untimed
    rows = []
    for index, pair in enumerate(pairs):
        volume = volumes[index % len(volumes)].name
        for method in METHODS:
            start = time.perf_counter()
            field = estimate(method, pair, network, grid, args.quick)
            seconds = time.perf_counter() - start
            metrics = evaluate(field, pair, spacing)
            rows.append({"pair": index, "volume": volume, "method": method, **metrics, "seconds": seconds})
        errors = ", ".join(f"{r['method']} {r['epe_vox']:.2f}" for r in rows[-len(METHODS) :])
        print(f"pair {index + 1}/{num_pairs} ({volume}) EPE: {errors}", flush=True)

    print("\nmeans over pairs, valid voxels:\n" + summary_table(rows))

    default_output = REPO / "benchmarks" / "results" / f"classical_registration_{bundle.name}.csv"
    output = Path(args.output) if args.output else default_output
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nper-pair results: {output}")


if __name__ == "__main__":
    main()
