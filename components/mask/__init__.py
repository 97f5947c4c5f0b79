"""Maskers: token masks, bool[*,N], True = masked."""
