"""The dry run describes what a bundle setting does on the embedded sample and warns about settings that cannot work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cover3d.dryrun import dry_run
from python_command import run_module

REPO = Path(__file__).resolve().parents[1]
MRI = str(REPO / "bundles" / "cover_mri" / "train.json")
TINY_NET = {"channels": [4, 8, 8, 16, 16], "groups": [2, 2, 2, 1, 1]}


@pytest.fixture
def two_mri_volumes(tmp_path) -> str:
    """Datalist of the sample's ts_example_mr (30 slices at 2 mm: thinner than the 48-voxel patch) and stroke_flair."""
    datalist = {"training": [{"image": "ts_example_mr.nii.gz"}, {"image": "stroke_flair.nii.gz"}], "validation": []}
    path = tmp_path / "two.json"
    path.write_text(json.dumps(datalist))
    return str(path)


def test_dry_run_figures_match_what_the_trainer_logs_and_the_memory_estimate_is_honest(two_mri_volumes, tmp_path):
    """In its own process (ru_maxrss is the process's peak): the figures match what the trainer logs, the thin volume
    warns, and the estimated peak memory of the run is within a factor of 2 of the measured peak RSS (the dry run
    reads both volumes, as the run caches them; the old step-only estimate was 4.6 times below a measured peak)."""
    output = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "cover3d.dryrun", "--config_file", MRI, "--datalist", two_mri_volumes,
         "--dryrun_volumes", "2", "--dryrun_pairs", "2", "--dryrun_steps", "2", "--dryrun_output", str(output),
         "--channels", "[4,8,8,16,16]", "--groups", "[2,2,2,1,1]"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    thin, flair = report["volumes"]
    assert thin["shape"][2] < 48 <= min(flair["shape"]) and thin["spacing_mm"] == [2.0, 2.0, 2.0]
    assert any("ts_example_mr" in w and "smaller than the patch" in w and "axis [2]" in w for w in report["warnings"])
    assert not any("stroke_flair" in w and "smaller than the patch" in w for w in report["warnings"])
    # batch 2, pairs in volume order: step i trains on the two pairs of volume i, and logs their batch means
    logged = report["steps"]["logged"]
    assert len(logged) == report["steps"]["steps"] == 2
    for volume, step in zip(report["volumes"], logged):
        for key, figure in (("foreground_fraction", "foreground"), ("reach_fraction", "within_reach")):
            expected = sum(p[figure] for p in volume["pairs"]) / 2
            assert step[key] == pytest.approx(expected, abs=1e-6), key
    # ts_example_mr's padded slab leaves about 40 % of the supervised voxels in background (measured 38 %)
    assert min(p["foreground"] for p in thin["pairs"]) < 0.75
    assert any("ts_example_mr" in w and "foreground" in w for w in report["warnings"])
    assert report["reach_fraction"] == 1.0

    memory, measured = report["memory"], report["steps"]["measured_peak_rss_bytes"]
    assert memory["cached_volumes"] == 2 and memory["step"] == report["estimated_peak_bytes"]
    assert memory["peak_rss"] == memory["baseline"] + memory["data"] + memory["step"]  # CPU: the step is in RSS
    assert measured / 2 < memory["peak_rss"] < 2 * measured, (memory, measured)
    assert "estimated peak memory of the run:" in result.stdout and "measured peak RSS of this dry run" in result.stdout


def test_supervised_fraction_is_set_by_the_deformation_not_by_the_data(tmp_path, capsys):
    """The mask is p + psi(p) inside view a's patch: two different volumes give the same fraction for one setting
    (the deformations are drawn from the seed alone), a stronger deformation lowers it, and the output says so."""
    reports = []
    stronger = {"pair_transform#deformation": "$c3t.RandDeformationField(translate_range=12.0)"}
    for name, deformation in (("ts_example_mr", {}), ("stroke_flair", {}), ("stroke_flair", stronger)):
        datalist = tmp_path / f"{name}.json"
        datalist.write_text(json.dumps({"training": [{"image": f"{name}.nii.gz"}], "validation": []}))
        reports.append(dry_run(MRI, dryrun_volumes=1, dryrun_steps=0, datalist=str(datalist), **TINY_NET,
                               **deformation))  # fmt: skip
    thin, flair, strong = (r["supervised_fraction"] for r in reports)
    assert thin == flair and strong < flair - 0.05, (thin, flair, strong)
    assert reports[0]["volumes"][0]["pairs"][0]["foreground"] != reports[1]["volumes"][0]["pairs"][0]["foreground"]
    assert "not by the images; the same on every dataset for one setting" in capsys.readouterr().out


def test_mask_background_makes_every_supervised_voxel_foreground(two_mri_volumes):
    report = dry_run(MRI, dryrun_volumes=1, dryrun_steps=0, datalist=two_mri_volumes, mask_background=True, **TINY_NET)
    assert report["foreground_fraction"] == 1.0 and not any("foreground" in w for w in report["warnings"])


def test_cli_warns_about_too_small_a_reach_and_a_patch_bigger_than_the_volume(two_mri_volumes):
    # translations up to 36 voxels against the smallest radii (1 per level: reach 31 voxels)
    strong = "$c3t.RandDeformationField(translate_range=36.0)"
    overrides = ["--pair_transform#deformation", strong, "--patch_size", "[64,64,64]", "--context_size", "[96,96,96]",
                 "--channels", "[4,8,8,16,16]", "--groups", "[2,2,2,1,1]"]  # fmt: skip
    result = run_module("cover3d.dryrun", ["--config_file", MRI, "--datalist", two_mri_volumes, "--dryrun_volumes", "2",
                                           "--dryrun_steps", "0", *overrides], cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING:")]
    assert any("pyramid's reach of 31 voxels" in w for w in warnings), result.stdout
    for name in ("ts_example_mr", "stroke_flair"):  # 77 x 67 x 60 voxels: smaller than 64^3 too
        assert any(name in w and "smaller than the patch (64, 64, 64)" in w for w in warnings), result.stdout


def test_refuses_a_config_it_cannot_describe(tmp_path):
    config = tmp_path / "other.json"
    config.write_text(json.dumps({"run": ["$print('hi')"]}))
    with pytest.raises(ValueError, match="neither a pretraining bundle"):
        dry_run(str(config))


LA = REPO.parent / "shared" / "data" / "la_mri_2018"


@pytest.mark.skipif(not LA.is_dir(), reason=f"needs the shared data folder {LA}")
def test_segmentation_bundle_gets_shapes_labels_and_padding_warnings():
    report = dry_run(str(REPO / "bundles" / "cover_seg" / "train.json"), dryrun_volumes=1, dataset_dir=str(LA))
    (volume,) = report["volumes"]
    assert "reach_fraction" not in report and 0 < volume["label_foreground"] < 0.2
    padded = any(n < p for n, p in zip(volume["shape"], report["patch_size"]))
    assert padded == any("smaller than the patch" in w for w in report["warnings"])
