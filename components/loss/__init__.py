"""Losses: scalar objectives, each one paper's formula."""
