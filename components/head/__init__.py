"""Heads: projections from encoder tokens to predictions."""
