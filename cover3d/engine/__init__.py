from cover3d.engine.best_checkpoint import BestCheckpointSaver
from cover3d.engine.bundle import locate_bundle
from cover3d.engine.checkpoints import RunLock, RunLockedError, latest_checkpoint, list_checkpoints, save_atomic, write_json_atomic
from cover3d.engine.distributed import AverageLossGradients
from cover3d.engine.health import RepresentationHealth, effective_rank, feature_health
from cover3d.engine.outputs import load_weights, log_written, refuse_existing, segmentation_output_paths
from cover3d.engine.run_checkpoints import CheckpointMismatchError, RunFolderError, TrainingCheckpoints
from cover3d.engine.settings import check_settings, default_num_threads, default_num_workers, require_bool, set_num_threads
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
    "default_num_workers",
    "effective_rank",
    "feature_health",
    "field_accuracy",
    "fixed_pairs",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "locate_bundle",
    "log_written",
    "loss_inputs",
    "prepare_pair_batch",
    "refuse_existing",
    "report_field_accuracy",
    "require_bool",
    "save_atomic",
    "scalar_outputs",
    "segmentation_output_paths",
    "set_num_threads",
    "write_json_atomic",
]
