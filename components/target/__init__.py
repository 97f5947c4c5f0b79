"""Targets: what the student predicts (pixels, code ids, features)."""
