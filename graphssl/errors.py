"""Problems found in a pipeline, reported all together, each with its YAML path."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    path: str  # dotted YAML path, e.g. "nodes.mask.ratio"
    message: str
    line: int | None = None  # 1-based line in the pipeline file, when known
    warning: bool = False

    def format(self, source: str | None = None) -> str:
        where = source or "pipeline"
        if self.line is not None:
            where += f":{self.line}"
        kind = "warning" if self.warning else "error"
        return f"{where}: {kind}: {self.path}: {self.message}" if self.path else f"{where}: {kind}: {self.message}"


class PipelineError(Exception):
    """Raised with every problem found; the CLI prints them and exits with 2."""

    def __init__(self, problems: Iterable[Problem], source: str | None = None):
        self.problems = [p for p in problems if not p.warning]
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        n = len(self.problems)
        head = f"{self.source or 'pipeline'}: {n} error{'s' if n != 1 else ''}"
        return "\n".join([head] + ["  " + p.format(self.source) for p in self.problems])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
