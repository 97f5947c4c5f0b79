"""Teacher post-processing: teacher logits to target distributions (centering and sharpening, Sinkhorn-Knopp)."""
