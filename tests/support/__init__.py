"""Helpers only the tests (and docs/make_pictures.py) use: a local MLflow server with headless Chromium, schema checks."""
