"""Fine-tune in nnU-Net from exported cover3d weights, as ``nnUNetv2_train -pretrained_weights`` does, on a tiny budget.

``python tests/nnunet_worker.py DATASET_ID PLANS_NAME PRETRAINED_FILE OUT_JSON`` (nnUNet_raw / nnUNet_preprocessed /
nnUNet_results set in the environment) builds nnU-Net's trainer for configuration ``3d_fullres``, fold 0, on the CPU,
loads the weights with ``maybe_load_checkpoint`` (the call ``nnUNetv2_train -pretrained_weights`` makes), records for
every tensor of the network it built whether it equals the exported one, then trains 1 epoch of 2 iterations
(1 validation iteration) and writes OUT_JSON: ``{"compared", "equal", "heads", "train_losses"}``.
"""

from __future__ import annotations

import json
import sys

import torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint


def main(dataset_id: str, plans_name: str, pretrained: str, out: str) -> None:
    trainer = get_trainer_from_args(dataset_id, "3d_fullres", 0, "nnUNetTrainer", plans_name, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
    maybe_load_checkpoint(trainer, False, False, pretrained)
    exported = torch.load(pretrained, weights_only=True)["network_weights"]
    state = trainer.network.state_dict()
    bodies = {k: v for k, v in state.items() if ".seg_layers." not in k}
    equal = [k for k, v in bodies.items() if k in exported and torch.equal(v.cpu(), exported[k])]
    trainer.run_training()
    losses = [float(v) for v in trainer.logger.get_value("train_losses", step=None)]
    result = {"compared": len(bodies), "equal": len(equal), "heads": len(state) - len(bodies), "train_losses": losses}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
