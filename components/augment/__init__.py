"""Augmenters: batched tensor ops on the training device."""
