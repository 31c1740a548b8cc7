"""The protocols' entry points: ``python -m cover3d.protocols.<name> --help`` explains every option, and a bad value
ends the output with one line naming the option."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cover3d.errors import InputValueError
from cover3d.protocols import feature_probe, label_efficiency, pretext_comparison
from python_command import run_module

PROTOCOLS = {"label_efficiency": label_efficiency, "feature_probe": feature_probe,
             "pretext_comparison": pretext_comparison}  # fmt: skip


def options(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """Long option -> its help text, for every option but ``--help``."""
    return {action.option_strings[-1]: action.help for action in parser._actions
            if action.option_strings and not isinstance(action, argparse._HelpAction)}  # fmt: skip


@pytest.mark.parametrize("name", PROTOCOLS)
def test_help_runs_and_explains_every_option(name):
    described = options(PROTOCOLS[name].argument_parser())
    assert [option for option, text in described.items() if not text or text == argparse.SUPPRESS] == []
    result = run_module(f"cover3d.protocols.{name}", ["--help"], cwd=Path.cwd())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m cover3d.protocols.{name}")
    assert [option for option in described if option not in result.stdout] == []
    assert len(described) >= 10  # the options themselves, not only --help


@pytest.fixture
def datalists(tmp_path):
    """A dataset folder with a two-volume pool and a test datalist (the volumes are never read by these checks)."""
    entries = [{"image": f"imagesTr/{i}.nii.gz", "label": f"labelsTr/{i}.nii.gz"} for i in range(2)]
    (tmp_path / "pool.json").write_text(json.dumps({"training": entries, "validation": []}))
    (tmp_path / "test.json").write_text(json.dumps({"test": entries}))
    return tmp_path


def label_efficiency_args(folder, *extra):
    return ["--dataset-dir", str(folder), "--pool", str(folder / "pool.json"), "--test", str(folder / "test.json"),
            "--output", str(folder / "out"), "--modes", "scratch", *extra]  # fmt: skip


@pytest.mark.parametrize("extra, option", [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "ten"], "--epochs"),
    (["--iterations-per-epoch", "-3"], "--iterations-per-epoch"),
    (["--seeds", "-1"], "--seeds"),
    (["--start-no-run-after", "nan"], "--start-no-run-after"),
    (["--start-no-run-after", "-1"], "--start-no-run-after"),
    (["--overlay", "missing.json"], "--overlay"),
    (["--modes", "frozen"], "--modes"),
])  # fmt: skip
def test_a_bad_option_value_is_one_line_naming_it(datalists, capsys, extra, option):
    with pytest.raises(SystemExit) as exit_info:
        label_efficiency.main(label_efficiency_args(datalists, *extra))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and f"argument {option}" in last, last
    assert not (datalists / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("extra, message", [
    (["--sizes", "3"], r"--sizes must be in \[1, 2\]"),
    (["--sizes", "two"], r"--sizes must be in \[1, 2\]"),
    (["--set", "patch_size"], r"--set: expected key=value, got 'patch_size'"),
    (["--pool-keys", "labelled"], r"--pool-keys: datalist .* has no list\(s\) \['labelled'\]"),
])  # fmt: skip
def test_a_bad_setting_is_an_input_error_naming_it(datalists, extra, message):
    with pytest.raises(InputValueError, match=message):
        label_efficiency.main(label_efficiency_args(datalists, *extra))
    assert not (datalists / "out").exists()


def test_feature_probe_requires_its_data_unless_reporting(capsys):
    with pytest.raises(SystemExit):
        feature_probe.main(["--name", "x"])
    assert "required: --dataset-dir, --pool, --test, --output" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("name, argv, option", [
    ("feature_probe", ["--name", "x", "--pixdim", "0", "2", "2"], "--pixdim"),
    ("feature_probe", ["--name", "x", "--num-classes", "0"], "--num-classes"),
    ("feature_probe", ["--name", "x", "--weights", "missing.pt"], "--weights"),
    ("pretext_comparison", ["--epochs", "0"], "--epochs"),
    ("pretext_comparison", ["--pretexts", "simclr"], "--pretexts"),
    ("pretext_comparison", ["--pretrain-datalist", "missing.json"], "--pretrain-datalist"),
])  # fmt: skip
def test_the_other_protocols_name_a_bad_option_value_in_one_line(capsys, name, argv, option):
    with pytest.raises(SystemExit) as exit_info:
        PROTOCOLS[name].main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and f"argument {option}" in last, last
