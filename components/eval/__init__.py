"""Evaluators: measures of frozen features, run on a schedule."""
