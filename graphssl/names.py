"""What a name may be: pipeline, stage and node names, MLflow keys, run ids.

Pipeline, stage and node names are identifiers: they become folder and file names
(``checkpoints/RUN_ID/STAGE.stepN.state.pt``), MLflow metric keys (``loss/NODE``) and
tag keys (``graphssl.stage.STAGE.run``), so they may hold nothing that escapes a folder
or that MLflow refuses. Run names (``--run-name``) are free text.
"""
from __future__ import annotations

import posixpath
import re

IDENTIFIER_RULE = "letters, digits, '_' and '-', starting with a letter, at most 64 characters"
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

# What MLflow accepts as a metric, parameter or tag key (mlflow.utils.validation), on every platform but
# Windows: these characters, at most 250 of them, and nothing that a file path would resolve to another name.
MLFLOW_KEY_CHARACTERS = "letters, digits, '_', '-', '.', ' ', ':' and '/'"
MLFLOW_KEY = re.compile(r"[A-Za-z0-9_.\- :/]+")
MLFLOW_KEY_LENGTH = 250

RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def identifier_problem(name: object, what: str) -> str | None:
    """Why ``name`` is not an identifier ("a stage name 'x/y' ..."), or None when it is one."""
    if isinstance(name, str) and IDENTIFIER.fullmatch(name):
        return None
    return f"{what} {name!r} is not allowed: a name has only {IDENTIFIER_RULE}"


def mlflow_key_problem(key: str) -> str | None:
    """Why MLflow would refuse ``key`` as a metric, parameter or tag key, or None."""
    if not key or len(key) > MLFLOW_KEY_LENGTH:
        return f"{key!r} is not a key MLflow accepts: 1 to {MLFLOW_KEY_LENGTH} characters"
    if not MLFLOW_KEY.fullmatch(key):
        bad = sorted({c for c in key if not MLFLOW_KEY.fullmatch(c)})
        return f"{key!r} is not a key MLflow accepts: {' '.join(map(repr, bad))} (allowed: {MLFLOW_KEY_CHARACTERS})"
    normal = posixpath.normpath(key)
    if normal != key or normal.startswith(("..", "/")) or normal == ".":
        return f"{key!r} is not a key MLflow accepts: read as a path it would be {normal!r}"
    return None


def run_id_problem(run_id: object) -> str | None:
    """Why ``run_id`` cannot name a run folder (under checkpoints/), or None."""
    if isinstance(run_id, str) and RUN_ID.fullmatch(run_id):
        return None
    return f"{run_id!r} is not a run id (letters, digits, '_' and '-')"
