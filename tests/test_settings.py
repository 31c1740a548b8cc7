"""Every setting a user types on a bundle's command line: a bad value stops the run before anything is read or
trained, with one line (the last of the output) naming the setting, its value and what is allowed."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from cover3d.engine.settings import (
    SETTING_RULES,
    check_settings,
    device,
    fields,
    file_name_part,
    integer,
    number,
    numbers,
    optional,
    path,
    spatial_size,
    word,
)
from cover3d.errors import InputFileNotFoundError, InputValueError, excepthook
from python_command import run_module

REPO = Path(__file__).resolve().parents[1]
CT, MRI, SEG = (["bundles/cover_ct/train.json"], ["bundles/cover_mri/train.json"], ["bundles/cover_seg/train.json"])
CT_EVALUATE = ["bundles/cover_ct/train.json", "bundles/cover_ct/evaluate.json"]
MRI_INFERENCE = ["bundles/cover_mri/train.json", "bundles/cover_mri/inference.json"]
SEG_EVALUATE, SEG_INFERENCE = ["bundles/cover_seg/evaluate.json"], ["bundles/cover_seg/inference.json"]
OVERLAYS = {name: [*MRI, f"bundles/cover_mri/{name}.json"] for name in (
    "pretext_cycle", "pretext_restoration", "pretext_infonce", "pretext_relloc", "guard_vicreg", "pseudo_fields")}
MISSING_CUDA = f"cuda:{max(3, torch.cuda.device_count())}"  # a CUDA device this machine lacks

# (config files, setting, bad value as the command line's parser (fire) hands it over, other overrides);
# "<tmp>" in a value is the test's temporary folder
CASES = [
    (CT, "device", "banana", {}),
    (CT, "device", MISSING_CUDA, {}),
    (CT, "epochs", -1, {}),
    (CT, "epochs", 0, {}),
    (CT, "epochs", "ten", {}),
    (CT, "learning_rate", "abc", {}),
    (CT, "learning_rate", -1, {}),
    (CT, "batch_size", 0, {}),
    (CT, "context_size", [40, 40, 40], {}),
    (CT, "resume", "false", {}),
    (CT, "amp_dtype", "float64", {}),
    (CT, "veu", "flash", {}),
    (MRI, "veu", "fused", {"device": "cpu"}),  # the fused VEU's backward needs CUDA
    (CT, "compile", "yes", {}),
    (MRI, "channels_last", "true", {}),
    (CT, "pixdim", [2.5, 2.5], {}),
    (CT, "channels", [8, 16, 32, 64], {}),
    (CT, "num_workers", -1, {}),
    (CT, "store", str(REPO / "README.md"), {}),  # a file
    (MRI, "store", 7, {}),
    (CT, "checkpoints_kept", 1, {}),
    (CT, "dataset_dir", "<tmp>/no_such_folder", {}),
    (CT, "datalist", "<tmp>", {}),
    (CT, "hu_window", [1000, -1000], {}),
    (MRI, "percentiles", [99.5, 0.5], {}),
    (MRI, "background_threshold", 1.5, {}),
    (MRI, "iterations_per_epoch", 2.5, {}),
    (MRI, "warmup_iterations", -5, {}),
    (MRI, "validation_pairs", 0, {}),
    (MRI, "seed", -1, {}),
    (MRI, "log_interval", 0, {}),
    (MRI, "num_threads", 0, {}),
    (MRI, "checkpoint_interval", "often", {}),
    (CT, "radii", [1, 1, 1, 1], {}),
    (MRI, "groups", [4, 4, 4, 1, 0], {}),
    (CT, "loss_weights#con_weight", -1, {}),
    (MRI, "loss_weights#level_weights", [1.0, 1.0], {}),
    (MRI, "loss_weights#con_centred", "no", {}),
    (SEG, "patch_size", [40, 48, 32], {}),
    (SEG, "freeze_backbone", "yes", {}),
    (SEG, "pretrained_weights", "<tmp>/no_such_weights.pt", {}),
    (SEG, "modality", "pet", {}),
    (SEG, "sw_overlap", 1.0, {}),
    (SEG, "num_classes", 1, {}),
    (SEG, "min_loaded_fraction", 0, {}),
    (SEG, "infer_roi_size", [48, 48, 40], {}),
    (SEG, "train_key", "", {}),
    (SEG, "val_key", 3, {}),
    (SEG_EVALUATE, "weights", "<tmp>/no_such_model.pt", {}),
    (SEG_EVALUATE, "infer_roi_size", [40, 40, 40], {}),
    (SEG_EVALUATE, "eval_key", None, {}),
    (SEG_INFERENCE, "device", "gpu", {}),
    (SEG_INFERENCE, "infer_key", "", {}),
    (SEG_INFERENCE, "output_postfix", "../seg", {}),
    (CT_EVALUATE, "eval_pairs", 0, {}),
    (CT_EVALUATE, "eval_datalist_key", "", {}),
    (MRI_INFERENCE, "image_a", "<tmp>/no_such_volume.nii.gz", {}),
    (MRI_INFERENCE, "deformation_seed", "x", {}),
    (OVERLAYS["pretext_cycle"], "cycle#weight", -0.1, {}),
    (OVERLAYS["pretext_restoration"], "restoration#weight", "high", {}),
    (OVERLAYS["pretext_infonce"], "infonce#temperature", 0, {}),
    (OVERLAYS["pretext_relloc"], "relloc#levels", [-1, 5], {}),
    (OVERLAYS["guard_vicreg"], "vicreg#num_samples", 1, {}),
    (OVERLAYS["pseudo_fields"], "pseudo#teacher_weights", None, {}),  # the overlay's default: the user must set it
    (OVERLAYS["pseudo_fields"], "pseudo#threshold", -1, {"pseudo#teacher_weights": str(REPO / "weights" / "cover_mri_pool_2mm" / "model.pt")}),
]
# these cases also run as real `python -m monai.bundle run` commands, with the text a user types (a word fire keeps
# as a string, a device string, lists fire parses); each costs a process start (imports), so only a few
COMMAND_LINE = {
    ("epochs", "ten"): "ten",
    ("device", MISSING_CUDA): MISSING_CUDA,
    ("context_size", (40, 40, 40)): "[40,40,40]",
    ("patch_size", (40, 48, 32)): "[40,48,32]",
}


def _key(setting: str, value: object) -> tuple[str, object]:
    return setting, tuple(value) if isinstance(value, list) else value


def _fill(value: object, tmp: Path) -> object:
    return value.replace("<tmp>", str(tmp)) if isinstance(value, str) else value


def _overrides(files: list[str], tmp: Path) -> dict[str, object]:
    """Settings that send every output into ``tmp/out``, give cover_seg (whose default data set may be absent) a
    folder, a datalist and weights that exist, and keep a run tiny should a check fail to stop it."""
    out = tmp / "out"
    overrides: dict[str, object] = {"output_dir": str(out / "runs")}
    if files[0] != SEG_INFERENCE[0] and files[0] != SEG_EVALUATE[0]:
        overrides.update(ckpt_dir=str(out / "models"), epochs=1, iterations_per_epoch=1)
    if files[0].startswith("bundles/cover_seg"):
        (tmp / "data").mkdir(exist_ok=True)
        (tmp / "list.json").write_text(json.dumps({"training": [], "validation": [], "test": []}))
        overrides.update(dataset_dir=str(tmp / "data"), datalist=str(tmp / "list.json"))
    if files in (SEG_EVALUATE, SEG_INFERENCE, CT_EVALUATE, MRI_INFERENCE):
        (tmp / "model.pt").write_bytes(b"")
        overrides["weights"] = str(tmp / "model.pt")
    if files == CT_EVALUATE:
        overrides["eval_file"] = str(out / "eval.json")
    if files == MRI_INFERENCE:
        overrides.update(predictions_dir=str(out / "predictions"), image_a=str(REPO / "sample_data" / "mri"))
    return overrides


def _assert_nothing_written(tmp: Path) -> None:
    out = tmp / "out"
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("files, setting, value, extra", CASES, ids=[f"{f[-1].split('/')[1]}:{f[-1].split('/')[2][:-5]}:{s}={v}" for f, s, v, _ in CASES])
def test_a_bad_setting_stops_initialisation_with_one_line_naming_it(files, setting, value, extra, tmp_path, capsys):
    """As ``monai.bundle run`` does (ConfigWorkflow with the overrides, then ``initialize``), in process: the first
    step of ``initialize`` refuses the value before any data list is read or any training object is built."""
    from monai.bundle import ConfigWorkflow

    value = _fill(value, tmp_path)
    overrides = {**_overrides(files, tmp_path), **extra, setting: value}
    workflow = ConfigWorkflow(config_file=[str(REPO / f) for f in files], workflow_type=None, **overrides)
    with pytest.raises(Exception) as caught:
        workflow.initialize()
    resolved = workflow.parser.ref_resolver.resolved_content
    assert not [k for k in resolved if k.endswith("#datalist") or k in ("network", "train#trainer", "optimizer")]
    _assert_nothing_written(tmp_path)
    capsys.readouterr()
    excepthook(type(caught.value), caught.value, caught.value.__traceback__)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert setting in last and repr(value) in last, last


@pytest.mark.slow
@pytest.mark.parametrize("setting, value", list(COMMAND_LINE))
def test_the_bundle_command_ends_with_the_settings_line(setting, value, tmp_path):
    """The real command line: fire's parsing of the typed text, MONAI's wrapping and cover3d's excepthook; the
    output's last line names the setting and its value, no traceback, no iteration, no file."""
    files = next(f for f, s, v, _ in CASES if _key(s, v) == (setting, value))
    typed = COMMAND_LINE[(setting, value)]
    overrides = [f"--{k}={v}" for k, v in _overrides(files, tmp_path).items()]
    config = files[0] if len(files) == 1 else str(files).replace(" ", "")
    arguments = ["run", "--config_file", config, *overrides, f"--{setting}", typed]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("COVER3D_TRACEBACK", None)
    result = run_module("monai.bundle", arguments, cwd=REPO, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and lines, result.stderr[-3000:]
    shown = value if isinstance(value, str) else list(value)
    assert setting in lines[-1] and repr(shown) in lines[-1], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Epoch: 1/" not in result.stdout + result.stderr and "Engine run" not in result.stdout + result.stderr
    _assert_nothing_written(tmp_path)


def test_every_bundle_setting_checked_has_a_rule_and_the_defaults_pass(tmp_path):
    """The settings each bundle checks at start-up, with its default values: all accepted."""
    from monai.bundle import ConfigParser

    (tmp_path / "teacher.pt").write_bytes(b"")
    for files in (CT, MRI, SEG, CT_EVALUATE, MRI_INFERENCE, SEG_EVALUATE, SEG_INFERENCE, *OVERLAYS.values()):
        parser = ConfigParser()
        parser.read_config([str(REPO / f) for f in files])
        parser.update(_overrides(files, tmp_path))  # files the defaults name that a fresh clone lacks
        if files == OVERLAYS["pseudo_fields"]:
            parser["pseudo"]["teacher_weights"] = str(tmp_path / "teacher.pt")  # no default: the user names one
        checked = parser.get("checked_settings")
        assert checked["_target_"] == "cover3d.engine.check_settings"
        assert {k for k in checked if not k.startswith("_")} <= set(SETTING_RULES)
        steps = parser.get("initialize")
        assert steps[0] == "@checked_settings" or steps[:2] == [f"$require_base_config('{Path(files[-1]).name}')",
                                                               "@checked_settings"]
        parser.get_parsed_content("checked_settings")


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        (integer(1), [1, 10**9], [0, -1, 1.0, True, "1", None]),
        (integer(0, 9), [0, 9], [-1, 10]),
        (number(0, low_open=True), [1e-6, 3, 2.5], [0, -1, math.nan, math.inf, "1e-3", False]),
        (number(0, 1, high_open=True), [0, 0.5], [1, 1.0, -0.1]),
        (numbers(3, number(0, low_open=True)), [[1, 2, 3.5], (1.0, 1.0, 1.0)], [[1, 2], [1, 2, 0], "1,2,3", 3]),
        (numbers(2, number(0, 100), ordered=True), [[0, 100], [0.5, 99.5]], [[50, 50], [99, 1], [0, 101]]),
        (numbers(None, integer(1)), [[], [5, 10]], [[0], 5]),
        (spatial_size(16), [[16, 32, 48], (64, 48, 32)], [[40, 48, 32], [48, 48], [0, 16, 16], [16.0, 16, 16]]),
        (spatial_size(1), [[1, 2, 3]], [[1, 2, -3]]),
    ],
)
def test_rules_accept_and_refuse(rule, good, bad):
    for value in good:
        rule(value, "x")
    for value in bad:
        with pytest.raises(InputValueError, match=r"^setting '?x'? "):
            rule(value, "x")


def test_text_rules_and_a_dict_of_rules_name_the_key_as_the_command_line_does():
    word("validation", "train_key")
    file_name_part("seg_v2", "output_postfix")
    for rule, value in ((word, ""), (word, " "), (word, 3), (file_name_part, "a/b"), (file_name_part, None)):
        with pytest.raises(InputValueError, match="^setting 'x' must be "):
            rule(value, "x")
    weights = fields(vec_weight=number(0), level_weights=optional(numbers(4, number(0))))
    weights({"vec_weight": 1, "level_weights": None}, "loss_weights")
    weights({"vec_weight": 0.0, "level_weights": [1, 1, 0.5, 0]}, "loss_weights")
    for value, named in (({"vec_weight": -1, "level_weights": None}, "'loss_weights#vec_weight' must be a number >= 0"),
                         ({"vec_weight": 1, "level_weights": [1]}, "'loss_weights#level_weights' must be a list of 4"),
                         ({"vec_weight": 1}, "'loss_weights' must be a dict of vec_weight"),
                         ({"vec_weight": 1, "level_weights": None, "other": 1}, "'loss_weights' must be a dict of"),
                         ([1.0], "'loss_weights' must be a dict of")):  # fmt: skip
        with pytest.raises(InputValueError, match=f"^setting {re.escape(named)}"):
            weights(value, "loss_weights")


def test_device_rule_accepts_this_machines_devices_as_strings_or_torch_devices():
    for value in ("cpu", torch.device("cpu"), "cpu:0"):
        device(value, "device")
    if torch.cuda.is_available():
        device("cuda", "device")
        device(torch.device("cuda", torch.cuda.device_count() - 1), "device")
    for value in ("banana", MISSING_CUDA, torch.device(MISSING_CUDA), "meta", None):
        with pytest.raises(InputValueError, match="setting 'device' must be a device of this machine: 'cpu'"):
            device(value, "device")


def test_path_rule_tells_missing_from_the_wrong_kind(tmp_path):
    (tmp_path / "file.json").write_text("{}")
    path("file")(str(tmp_path / "file.json"), "datalist")
    path("folder")(tmp_path, "dataset_dir")
    with pytest.raises(InputFileNotFoundError, match="'datalist' must be an existing file, got .* \\(not found\\)"):
        path("file")(str(tmp_path / "absent.json"), "datalist")
    with pytest.raises(InputValueError, match="'dataset_dir' must be an existing folder, got .* \\(a file\\)"):
        path("folder")(str(tmp_path / "file.json"), "dataset_dir")


def test_check_settings_compares_context_with_patch_and_knows_every_name():
    check_settings(patch_size=[48, 48, 32], context_size=[48, 64, 32])
    with pytest.raises(InputValueError, match=r"'context_size' must be at least patch_size \[48, 48, 32\] on every "
                                              r"axis, got \[48, 40, 32\]"):
        check_settings(patch_size=[48, 48, 32], context_size=[48, 40, 32])
    with pytest.raises(KeyError, match="no rule for setting"):
        check_settings(epoch=10)


@pytest.mark.parametrize("name", ["cover_ct", "cover_mri", "cover_seg"])
def test_bundle_readme_lists_every_checked_setting_with_its_rule(name):
    """The "Settings" table of each bundle README names every setting its configs check, each with the text of
    its rule, so the documented ranges cannot drift from the checks."""
    checked = set()
    for kind in ("train", "evaluate", "inference"):
        config = json.loads((REPO / "bundles" / name / f"{kind}.json").read_text())
        checked |= {k for key in ("checked_settings", "+checked_settings") for k in config.get(key, {})
                    if not k.startswith("_")}
    readme = (REPO / "bundles" / name / "README.md").read_text().split("## Settings\n", 1)[1]
    documented = {}
    for row in readme.split("\n\n", 2)[1].splitlines()[2:]:
        settings, allowed = row.strip("|").split(" | ")
        documented.update({s.strip(" `"): allowed.strip() for s in settings.split(",")})
    assert set(documented) == checked
    assert {s: SETTING_RULES[s].allowed for s in checked} == documented


@pytest.mark.parametrize("overlay", ["bundles/cover_mri/inference.json", "bundles/cover_ct/evaluate.json"])
def test_an_overlay_run_alone_ends_with_the_command_that_works(overlay):
    """evaluate.json / inference.json of the pretraining bundles complete train.json: run alone, MONAI used to fail
    with "@seed is not defined" under a long traceback; now the last line gives the two-file command."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("COVER3D_TRACEBACK", None)
    result = run_module("monai.bundle", ["run", "--config_file", overlay], cwd=REPO, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    folder = Path(overlay).parent
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].endswith(f"run --config_file \"['{folder}/train.json','{overlay}']\""), lines[-1]


def test_the_overlay_guard_reads_the_command_line():
    from cover3d.engine.bundle import require_base_config
    from cover3d.errors import InputValueError

    require_base_config("inference.json", argv=["run", "--config_file", "['b/train.json','b/inference.json']"])
    require_base_config("inference.json", argv=["pytest", "-q"])  # no config files on the command line: silent
    with pytest.raises(InputValueError, match="b/inference.json completes b/train.json"):
        require_base_config("inference.json", argv=["run", "--config_file=b/inference.json"])
    with pytest.raises(InputValueError):  # listed after the overlay, train.json would override it
        require_base_config("inference.json", argv=["run", "--config_file", "['b/inference.json','b/train.json']"])


def test_num_workers_default_is_0_without_a_store_and_fits_each_process_cores_with_one(monkeypatch):
    """Without a store the volumes are in RAM (a worker would copy them): 0, as before. With a store: the cores of
    each torchrun process less one for training, between 1 and 4."""
    from cover3d.engine import default_num_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, processes, expected in ((16, 1, 4), (4, 1, 3), (2, 1, 1), (16, 8, 1), (16, 4, 3), (1, 1, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
        assert (default_num_workers(None), default_num_workers("/a/store")) == (0, expected), (cores, processes)
