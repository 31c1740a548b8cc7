"""A short real pretraining run on the embedded CT sample: loss and end-point error fall."""

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose
from monai.utils import set_determinism

from cover3d.data import load_datalist
from cover3d.engine import CoverTrainer, field_accuracy, fixed_pairs
from cover3d.losses import CoverLoss
from cover3d.networks import CoverNet
from cover3d.transforms import CoverPaird, appearance_augmentation, ct_preprocessing

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_pretraining_reduces_loss_and_endpoint_error():
    set_determinism(seed=0)
    datalist = load_datalist(REPO / "data_lists" / "sample_ct.json", base_dir=REPO / "sample_data" / "ct")
    preprocessing = ct_preprocessing(pixdim=(4.0, 4.0, 4.0))
    pair = CoverPaird(patch_size=32, context_size=48, appearance=appearance_augmentation("ct"))
    dataset = CacheDataset(datalist, Compose(preprocessing + [pair]), progress=False)
    loader = DataLoader(dataset, batch_size=2, shuffle=True)
    net = CoverNet(channels=(8, 16, 16, 32, 32), radii=(1, 1, 1, 1, 1), groups=(2, 2, 2, 1, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    trainer = CoverTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=60, train_data_loader=loader, network=net,
        optimizer=optimizer, loss_function=CoverLoss(),
    )  # fmt: skip
    history = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: history.append(dict(e.state.output)))
    pairs = fixed_pairs(Dataset(datalist, Compose(preprocessing)), pair, num_pairs=6, seed=7)

    before = field_accuracy(net, pairs)
    trainer.run()
    after = field_accuracy(net, pairs)

    assert before["epe_identity"] == pytest.approx(after["epe_identity"])  # same pairs
    first, last = history[:10], history[-10:]
    mean = lambda rows, key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "loss") < 0.8 * mean(first, "loss")
    assert mean(last, "epe") < 0.8 * mean(first, "epe")
    assert after["epe"] < 0.8 * before["epe"]
    assert all(set(r) >= {"loss_vec", "loss_con", "epe", "epe_identity", "lr", "it_per_s"} for r in history)
