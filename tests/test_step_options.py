"""``--compile True`` and ``--channels_last True`` of the pretraining bundles: the same losses as the eager,
contiguous step (on the CPU, a tiny network), and the bundles wire both settings to the trainer and the network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cover3d.engine import CoverTrainer
from cover3d.losses import CoverLoss
from cover3d.networks import CoverNet

REPO = Path(__file__).resolve().parents[1]
CHANNELS_LAST = torch.channels_last_3d


def pair_batch(patch: int = 32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    size = (patch,) * 3
    coarse = torch.randn((1, 3, 2, 2, 2), generator=gen) * 2
    return {
        "image": torch.rand((1, 1, *size), generator=gen),
        "image_b": torch.rand((1, 1, *size), generator=gen),
        "ddf": torch.nn.functional.interpolate(coarse, size=size, mode="trilinear", align_corners=False),
        "mask": torch.ones((1, 1, *size)),
    }


def step_losses(
    steps: int = 2, memory_format: torch.memory_format = torch.preserve_format, veu: str = "streaming", **trainer_kwargs
) -> list[float]:
    """Losses of ``steps`` CoverTrainer iterations on one fixed batch (tiny CoverNet with the ``veu`` VEU, AdamW lr
    1e-3), the network and the inputs in ``memory_format``, as the bundles wire ``channels_last``."""
    torch.manual_seed(0)
    network = CoverNet(channels=(8, 8, 8, 8, 8), radii=(1, 1, 1, 1, 1), groups=(1, 1, 1, 1, 1), veu_impl=veu)
    network = network.to("cpu", memory_format=memory_format)
    batch = pair_batch()
    seen = []
    network.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous(memory_format=memory_format)))
    trainer = CoverTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch], network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-3), loss_function=CoverLoss(),
        to_kwargs={"memory_format": memory_format}, **trainer_kwargs,
    )  # fmt: skip
    losses = [float(trainer._iteration(trainer, batch)["loss"]) for _ in range(steps)]
    assert seen and all(seen), "the network's input was not in the requested memory format"
    return losses


def test_channels_last_step_gives_the_eager_losses():
    """Step 1 within 1e-5 (relative); step 2 within 2e-3: channels-last convolutions sum in another order, and
    AdamW's normalised update turns those rounding differences of near-zero gradient entries into weight changes
    of up to one learning rate (measured: 18.63601 vs 18.63600, then 13.17928 vs 13.18589)."""
    eager, channels_last = step_losses(), step_losses(memory_format=CHANNELS_LAST)
    assert channels_last[0] == pytest.approx(eager[0], rel=1e-5)
    assert channels_last[1] == pytest.approx(eager[1], rel=2e-3)
    assert channels_last[1] < 0.9 * channels_last[0]  # it trains: the same batch's loss falls


@pytest.mark.slow
def test_compiled_step_gives_the_eager_losses():
    """``compile=True`` (MONAI's ``SupervisedTrainer`` argument) with the ``aot_eager`` backend: TorchDynamo's graph
    capture and AOTAutograd's joint forward/backward graph, the parts that change what is computed, without
    inductor's C++ code generation (inductor works on this machine too, but compiling this tiny network with it takes
    minutes of CPU; a GPU run uses inductor: benchmarks/gpu_check.py). The reference VEU: capturing the streaming
    VEU's unrolled per-offset loops took 4x the CPU time (110 vs 28 s; same losses, measured). Both steps within
    1e-4 (relative; measured 1e-6)."""
    eager = step_losses(veu="reference")
    compiled = step_losses(veu="reference", compile=True, compile_kwargs={"backend": "aot_eager"})
    assert compiled == pytest.approx(eager, rel=1e-4)


@pytest.mark.parametrize("bundle", ["cover_ct", "cover_mri"])
def test_bundle_wires_compile_and_channels_last(bundle, tmp_path):
    """``--compile True --channels_last True``: the trainer compiles the network and moves each batch to
    channels-last, the network's weights are channels-last; the defaults leave both off."""
    from monai.bundle import ConfigParser

    def parsed(**overrides) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "train.json"))
        parser.update({"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs"), **overrides})
        return parser

    on, off = parsed(compile=True, channels_last=True, device="cpu"), parsed(device="cpu")
    def conv(parser: ConfigParser) -> torch.nn.Conv3d:  # one with several input channels: there the formats differ
        modules = parser.get_parsed_content("network").modules()
        return next(m for m in modules if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)

    assert conv(on).weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert not conv(off).weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert on.get_parsed_content("train#trainer#compile") is True
    assert on.get_parsed_content("train#trainer#to_kwargs") == {"memory_format": CHANNELS_LAST}
    assert off.get_parsed_content("train#trainer#compile") is False
    assert off.get_parsed_content("train#trainer#to_kwargs") == {"memory_format": torch.preserve_format}
