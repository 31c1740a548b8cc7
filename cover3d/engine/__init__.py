from cover3d.engine.best_checkpoint import BestCheckpointSaver
from cover3d.engine.bundle import locate_bundle
from cover3d.engine.health import RepresentationHealth, effective_rank, feature_health
from cover3d.engine.checkpoints import (
    AtomicCheckpointSaver,
    ResumeFromLatest,
    latest_checkpoint,
    save_atomic,
    write_json_atomic,
)
from cover3d.engine.pseudo_fields import cycle_consistent_field
from cover3d.engine.trainer import CoverTrainer, loss_inputs, prepare_pair_batch, scalar_outputs
from cover3d.engine.validation import FieldValidation, field_accuracy, fixed_pairs, report_field_accuracy

__all__ = [
    "AtomicCheckpointSaver",
    "BestCheckpointSaver",
    "CoverTrainer",
    "FieldValidation",
    "RepresentationHealth",
    "ResumeFromLatest",
    "cycle_consistent_field",
    "effective_rank",
    "feature_health",
    "field_accuracy",
    "fixed_pairs",
    "latest_checkpoint",
    "locate_bundle",
    "loss_inputs",
    "prepare_pair_batch",
    "report_field_accuracy",
    "save_atomic",
    "scalar_outputs",
    "write_json_atomic",
]
