"""Encoders: timm ViTs with the paths masked image modeling needs."""
