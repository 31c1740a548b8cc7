from cover3d.losses.cover import ContrastiveLoss, CoverLoss, VectorLoss, downsample_mask, masked_mean

__all__ = ["ContrastiveLoss", "CoverLoss", "VectorLoss", "downsample_mask", "masked_mean"]
