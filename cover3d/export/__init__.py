"""Exporting pretrained cover3d weights for other frameworks (``python -m cover3d.export --format nnunet ...``)."""

from cover3d.export.nnunet import check_checkpoint_matches_plans, export_nnunet, nnunet_checkpoint, nnunet_plans

__all__ = ["check_checkpoint_matches_plans", "export_nnunet", "nnunet_checkpoint", "nnunet_plans"]
