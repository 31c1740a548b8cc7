"""Every pretext / guard overlay trains 2 iterations through ``monai.bundle run`` on the embedded MRI sample."""

import pytest
import torch
from test_bundles import REPO, TINY, bundle

OVERLAYS = {  # overlay -> the loss term its run must log
    "pretext_relloc.json": "loss_relloc",
    "pretext_cycle.json": "loss_cycle",
    "pretext_infonce.json": "loss_infonce",
    "pretext_restoration.json": "loss_restoration",
    "guard_vicreg.json": "loss_vicreg",
}


@pytest.mark.slow
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_runs_two_iterations_and_checkpoints_its_heads(overlay, tmp_path):
    folder = REPO / "bundles" / "cover_mri"
    configs = f"['{folder / 'train.json'}','{folder / overlay}']"
    outputs = ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs"), "--resume", "False"]
    result = bundle("run", "--config_file", configs, "--epochs", "1", *TINY, *outputs, cwd=tmp_path)
    log = result.stdout + result.stderr
    for term in (OVERLAYS[overlay], "health_cosine", "health_rank", "reach_fraction", "val_epe"):
        assert f"{term}: " in log, term
    checkpoint = torch.load(tmp_path / "models" / "checkpoint_2.pt", weights_only=True)  # named by iterations done
    heads = {k for k in checkpoint.get("pretext_loss", {}) if ".head" in k}
    assert bool(heads) == (overlay in ("pretext_relloc.json", "pretext_restoration.json"))
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(k.startswith(("backbone.", "pyramid.")) for k in weights)  # heads stay out of the downstream weights
    if heads:  # the heads' parameters are in the optimizer next to the network's
        optimizer_params = sum(len(g["params"]) for g in checkpoint["optimizer"]["param_groups"])
        assert optimizer_params == len(weights) + len(checkpoint["pretext_loss"])

