from cover3d.engine.best_checkpoint import BestCheckpointSaver
from cover3d.engine.bundle import locate_bundle
from cover3d.engine.checkpoints import RunLock, RunLockedError, latest_checkpoint, list_checkpoints, save_atomic, write_json_atomic
from cover3d.engine.distributed import AverageLossGradients
from cover3d.engine.health import RepresentationHealth, effective_rank, feature_health
from cover3d.engine.run_checkpoints import CheckpointMismatchError, RunFolderError, TrainingCheckpoints
from cover3d.engine.settings import check_settings, default_num_threads, require_bool, set_num_threads
from cover3d.engine.trainer import CoverTrainer, loss_inputs, prepare_pair_batch, scalar_outputs
from cover3d.engine.validation import FieldValidation, field_accuracy, fixed_pairs, report_field_accuracy

__all__ = [
    "AverageLossGradients",
    "BestCheckpointSaver",
    "CheckpointMismatchError",
    "CoverTrainer",
    "FieldValidation",
    "RepresentationHealth",
    "RunLock",
    "RunFolderError",
    "RunLockedError",
    "TrainingCheckpoints",
    "check_settings",
    "default_num_threads",
    "effective_rank",
    "feature_health",
    "field_accuracy",
    "fixed_pairs",
    "latest_checkpoint",
    "list_checkpoints",
    "locate_bundle",
    "loss_inputs",
    "prepare_pair_batch",
    "report_field_accuracy",
    "require_bool",
    "save_atomic",
    "scalar_outputs",
    "set_num_threads",
    "write_json_atomic",
]
