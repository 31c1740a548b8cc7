"""Loading pretrained weights: prefix alignment, shape report, input-channel adaptation, refusals."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch
from torch import nn

from cover3d.networks.nets.backbone import UNetBackbone
from cover3d.networks.nets.cover import CoverNet
from cover3d.networks.nets.segmentation import CoverSegNet
from cover3d.networks.weights import UnsafeWeightsError, load_pretrained_weights, pretraining_metadata, read_state_dict

CHANNELS = (8, 8, 16, 16, 16)


class Wrapper(nn.Module):
    """A wrapper registering the wrapped network under a name (DDP: ``module``, torch.compile: ``_orig_mod``)."""

    def __init__(self, name: str, network: nn.Module) -> None:
        super().__init__()
        self.add_module(name, network)


class NotAWeight:
    """An arbitrary picklable object: ``weights_only=True`` must refuse to unpickle it."""


class RunsCode:
    """Unpickling this runs ``touch marker`` through ``os.system``: a real code-executing weights file."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def seeded(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.1)
    return module


def backbone_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in network.backbone.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_covernet_weights_into_segnet_with_wrapper_prefixes(prefix):
    source = seeded(CoverNet(1, CHANNELS), 0)
    target = seeded(CoverSegNet(1, 3, CHANNELS), 1)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    report = load_pretrained_weights(target, state)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value), key
    assert report.backbone_fraction == 1.0
    assert len(report.loaded) == len(source.backbone.state_dict())
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    assert report.unexpected and all(k.startswith("pyramid.") for k in report.unexpected)
    assert not report.shape_mismatched and not report.adapted


def test_bare_backbone_and_segnet_prefixes_are_aligned():
    backbone = seeded(UNetBackbone(3, 1, CHANNELS), 0)
    segnet = seeded(CoverSegNet(1, 2, CHANNELS), 1)
    report = load_pretrained_weights(segnet, backbone.state_dict())  # adds "backbone."
    assert report.prefixes == ("", "backbone.") and report.backbone_fraction == 1.0
    assert torch.equal(segnet.backbone.conv_0.conv_0.conv.weight, backbone.conv_0.conv_0.conv.weight)
    fresh = seeded(UNetBackbone(3, 1, CHANNELS), 2)
    report = load_pretrained_weights(fresh, {"model." + k: v for k, v in segnet.state_dict().items()})
    assert report.prefixes == ("backbone.", "") and report.backbone_fraction == 1.0
    assert report.unexpected == ["head.weight", "head.bias"]
    assert torch.equal(fresh.upcat_1.convs.conv_1.conv.weight, segnet.backbone.upcat_1.convs.conv_1.conv.weight)


def test_wrapped_target_is_unwrapped():
    source = seeded(CoverNet(1, CHANNELS), 0)
    target = Wrapper("_orig_mod", Wrapper("module", seeded(CoverSegNet(1, 2, CHANNELS), 1)))
    load_pretrained_weights(target, source.state_dict())
    inner = target._orig_mod.module
    assert torch.equal(inner.backbone.down_4.convs.conv_1.conv.weight, source.backbone.down_4.convs.conv_1.conv.weight)


def test_head_with_other_class_count_is_reported_and_skipped(caplog):
    source = seeded(CoverSegNet(1, 3, CHANNELS), 0)
    target = seeded(CoverSegNet(1, 5, CHANNELS), 1)
    head_before = target.head.weight.clone()
    with caplog.at_level(logging.INFO, logger="cover3d.networks.weights"):
        report = load_pretrained_weights(target, source.state_dict())
    assert report.shape_mismatched == {
        "head.weight": ((3, CHANNELS[0], 1, 1, 1), (5, CHANNELS[0], 1, 1, 1)),
        "head.bias": ((3,), (5,)),
    }
    assert torch.equal(target.head.weight, head_before)
    assert report.backbone_fraction == 1.0 and not report.missing
    assert "shape mismatch" in caplog.text and "head.weight" in caplog.text


def backbone_outputs(network: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return network.eval()(x)


@pytest.mark.parametrize("source_channels, target_channels", [(1, 2), (2, 1), (3, 2)])
def test_input_channel_adaptation_keeps_activations(source_channels, target_channels):
    """The same image on every input channel gives the pretrained features, whatever the channel counts."""
    source = seeded(UNetBackbone(3, source_channels, CHANNELS), 0)
    target = seeded(UNetBackbone(3, target_channels, CHANNELS), 1)
    report = load_pretrained_weights(target, source.state_dict())
    assert report.adapted == ["conv_0.conv_0.conv.weight"] and report.backbone_fraction == 1.0
    assert target.conv_0.conv_0.conv.weight.shape[1] == target_channels
    image = torch.rand(1, 1, 16, 16, 16)
    expected = backbone_outputs(source, image.expand(-1, source_channels, -1, -1, -1))
    actual = backbone_outputs(target, image.expand(-1, target_channels, -1, -1, -1))
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_adaptation_can_be_disabled():
    source = seeded(UNetBackbone(3, 1, CHANNELS), 0)
    target = seeded(UNetBackbone(3, 2, CHANNELS), 1)
    report = load_pretrained_weights(target, source.state_dict(), adapt_in_channels=False)
    assert not report.adapted and list(report.shape_mismatched) == ["conv_0.conv_0.conv.weight"]


def test_refuses_when_almost_nothing_matches_and_leaves_network_unchanged(tmp_path):
    source = seeded(CoverNet(1, (16, 16, 32, 32, 64)), 0)
    target = seeded(CoverSegNet(1, 2, CHANNELS), 1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    bundle = tmp_path / "cover_mri"
    (bundle / "models").mkdir(parents=True)
    torch.save(source.state_dict(), bundle / "models" / "model.pt")
    (bundle / "metadata.json").write_text(json.dumps({"pretraining": {"backbone_channels": [16, 16, 32, 32, 64]}}))
    with pytest.raises(ValueError, match=r"refusing to load.*only \d+% .*channels=\[16, 16, 32, 32, 64\] pretrained"):
        load_pretrained_weights(target, bundle / "models" / "model.pt")
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="refusing to load"):  # unrelated keys: nothing matches at all
        load_pretrained_weights(target, {"encoder.weight": torch.zeros(3)})


def test_min_fraction_is_configurable():
    source = seeded(UNetBackbone(3, 1, CHANNELS), 0)
    state = {k: v for k, v in source.state_dict().items() if k.startswith(("conv_0.", "down_1."))}
    with pytest.raises(ValueError, match="min_fraction=0.5"):
        load_pretrained_weights(seeded(UNetBackbone(3, 1, CHANNELS), 1), state)
    report = load_pretrained_weights(seeded(UNetBackbone(3, 1, CHANNELS), 1), state, min_fraction=0.1)
    assert 0.1 < report.backbone_fraction < 0.5
    with pytest.raises(ValueError, match="min_fraction must be in"):
        load_pretrained_weights(seeded(UNetBackbone(3, 1, CHANNELS), 1), state, min_fraction=2.0)


def test_checkpoint_dicts_files_and_metadata(tmp_path):
    source = seeded(CoverNet(1, CHANNELS), 0)
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    path = bundle / "models" / "checkpoint_3.pt"
    torch.save({"network": source.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    metadata = {"preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]}, "pretraining": {"backbone_channels": list(CHANNELS)},
                "name": "cover_mri"}
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    assert set(read_state_dict(path)) == set(source.state_dict())
    assert pretraining_metadata(path) == {k: metadata[k] for k in ("preprocessing", "pretraining")}
    report = load_pretrained_weights(CoverSegNet(1, 2, CHANNELS), path)
    assert report.source == str(path) and report.metadata["preprocessing"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert "spacing_mm" in report.summary()


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 5"])
def test_weights_only_refuses_pickled_objects_and_never_suggests_unsafe_loading(writer, tmp_path):
    """torch 2.13 words the refusal differently per format ("Unsupported global" / "Unsupported operand 149")."""
    path = tmp_path / "unsafe.pt"
    content = {"network": CoverSegNet(1, 2, CHANNELS).state_dict(), "extra": NotAWeight()}
    if writer == "torch.save":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=5))
    with pytest.raises(ValueError) as caught:
        load_pretrained_weights(CoverSegNet(1, 2, CHANNELS), path)
    message = str(caught.value)
    assert message.startswith(f"refusing to load {path}: it holds pickled Python objects")
    assert "weights_only=True" in message and "arbitrary code" in message
    assert "torch.save(network.state_dict()" in message
    assert "False" not in message and caught.value.__cause__ is None  # torch's advice is not passed on
    if writer == "torch.save":
        assert "NotAWeight" in message


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 4", "pickle protocol 5"])
def test_a_code_executing_file_is_refused_unread_naming_the_global(writer, tmp_path):
    """torch 2.13 names ``posix.system`` only for a torch.save archive and stops at an opcode for a raw pickle; its
    text also advises that weights_only=False "will likely succeed": that must never reach the user."""
    marker = tmp_path / "executed"
    path = tmp_path / "weights.pt"
    content = {"network": CoverSegNet(1, 2, CHANNELS).state_dict(), "payload": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=int(writer[-1])))
    for load in (read_state_dict, lambda p: load_pretrained_weights(CoverSegNet(1, 2, CHANNELS), p)):
        with pytest.raises(UnsafeWeightsError) as caught:
            load(path)
        message = str(caught.value)
        assert f"refusing to load {path}: it holds pickled Python objects (global posix.system)" in message
        assert "\n" not in message and "False" not in message and "likely succeed" not in message
    assert not marker.exists()


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_state_dict(tmp_path / "missing.pt")
    torch.save({"epoch": 3, "losses": [0.5]}, tmp_path / "no_state.pt")
    with pytest.raises(ValueError, match="no_state.pt holds no state dict.*'epoch', 'losses'"):
        read_state_dict(tmp_path / "no_state.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file .*text.pt.*not a PyTorch checkpoint") as caught:
        read_state_dict(tmp_path / "text.pt")
    assert "False" not in str(caught.value)


def pretraining_bundle(
    tmp_path, source: CoverNet, spacing=(2.5, 2.5, 2.5), preset="cover3d.transforms.ct_preprocessing"
):
    """A pretraining bundle folder as a run leaves it: models/model.pt and models/metadata.json."""
    models = tmp_path / "bundle" / "models"
    models.mkdir(parents=True)
    torch.save(source.state_dict(), models / "model.pt")
    metadata = {
        "preprocessing": {"spacing_mm": list(spacing), "preset": preset, "preset_args": {"hu_window": [-1000, 1000]}},
        "pretraining": {"backbone_channels": list(CHANNELS), "basic_unet": source.backbone.basic_unet_kwargs(),
                        "norm_channels_per_group": source.backbone.channels_per_group},
    }
    (models / "metadata.json").write_text(json.dumps(metadata))
    return models / "model.pt"


def test_pretrained_backbone_loads_completely_into_monai_basic_unet(tmp_path, caplog):
    from monai.networks.nets import BasicUNet

    from cover3d.networks import group_norm_per_width

    source = seeded(CoverNet(1, CHANNELS), 0).eval()
    path = pretraining_bundle(tmp_path, source)
    layout = pretraining_metadata(path)["pretraining"]["basic_unet"]
    net = group_norm_per_width(BasicUNet(out_channels=2, **layout), 8).eval()
    report = load_pretrained_weights(net, path)
    assert report.backbone_fraction == 1.0 and len(report.loaded) == len(source.backbone.state_dict())
    assert sorted(report.missing) == ["final_conv.bias", "final_conv.weight"] and not report.shape_mismatched
    assert report.warnings == []
    features = []
    net.upcat_1.register_forward_hook(lambda module, args, out: features.append(out))
    x = torch.rand(1, 1, 32, 16, 16)
    with torch.no_grad():
        net(x)
        expected = source.backbone(x)[-1]
    assert expected.std() > 0.01  # not a constant feature map
    torch.testing.assert_close(features[0], expected, rtol=0, atol=0)

    # BasicUNet's defaults (InstanceNorm, slope 0.1) take every tensor too, but not the pretrained features: warned
    caplog.set_level(logging.WARNING)
    report = load_pretrained_weights(BasicUNet(out_channels=2, features=layout["features"]), path)
    assert report.backbone_fraction == 1.0 and len(report.warnings) == 2
    assert "InstanceNorm3d" in report.warnings[0] and "8 channels per group" in report.warnings[0]
    assert "negative_slope=0.2" in report.warnings[1] and "[0.1]" in report.warnings[1]
    assert all(w in caplog.text for w in report.warnings)


def test_downstream_preprocessing_differing_from_the_pretraining_is_warned(tmp_path, caplog):
    path = pretraining_bundle(tmp_path, seeded(CoverNet(1, CHANNELS), 0))
    same = {"spacing_mm": (2.5, 2.5, 2.5), "preset": "ct_preprocessing", "preset_args": {"hu_window": (-1000, 1000)}}
    assert load_pretrained_weights(CoverSegNet(1, 2, CHANNELS), path, preprocessing=same).warnings == []
    caplog.set_level(logging.WARNING)
    other = {"spacing_mm": [2.0, 2.0, 2.0], "preset": "cover3d.transforms.mri_preprocessing",
             "preset_args": {"hu_window": [-200, 300]}}
    report = load_pretrained_weights(CoverSegNet(1, 2, CHANNELS), path, preprocessing=other)
    assert report.warnings == [
        "voxel spacing differs: [2.5, 2.5, 2.5] mm pretrained vs [2.0, 2.0, 2.0] mm downstream",
        "intensity preset (modality) differs: ct_preprocessing pretrained vs mri_preprocessing downstream",
        "preprocessing argument hu_window differs: [-1000, 1000] pretrained vs [-200, 300] downstream",
    ]
    assert "voxel spacing differs" in caplog.text and "WARNING: voxel spacing" in report.summary()


def test_weights_from_the_old_backbone_layout_are_reported(tmp_path):
    """Metadata without a ``basic_unet`` layout: weights made before the backbone became BasicUNet."""
    path = pretraining_bundle(tmp_path, seeded(CoverNet(1, CHANNELS), 0))
    metadata = json.loads((path.parent / "metadata.json").read_text())
    metadata["pretraining"] = {"backbone_channels": list(CHANNELS), "norm": "GroupNorm, 8 channels per group"}
    (path.parent / "metadata.json").write_text(json.dumps(metadata))
    report = load_pretrained_weights(CoverSegNet(1, 2, CHANNELS), path)
    assert len(report.warnings) == 1 and "8 channels per group" in report.warnings[0]
    assert "re-run the pretraining" in report.warnings[0]
