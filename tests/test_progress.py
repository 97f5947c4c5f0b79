"""The console hook: a rich progress bar on a terminal, plain greppable lines otherwise."""
from __future__ import annotations

import io

import torch

from graphssl.console import ConsoleHook


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def metrics(step: int) -> dict:
    return {"loss": torch.tensor(1.0 / (step + 1)), "loss/a": torch.tensor(0.5), "loss/b": torch.tensor(0.25),
            "lr": 1e-3, "images_per_s": 640.0, "step_time_s": 0.1}


def drive(hook: ConsoleHook, total: int) -> None:
    for step in range(total):
        hook.on_step_end(None, step, metrics(step))
        if step == 1:
            hook.on_eval(None, step, {"knn": {"knn_top1": 0.5}})


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    drive(ConsoleHook(4, 2, stream=out), 4)
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step")] == ["2/4", "4/4"]
    assert "loss=0.2500 (a=0.5000 b=0.2500)" in lines[-1] and "640 img/s" in lines[-1] and "lr=1.00e-03" in lines[-1]
    assert "eval after step 2: knn_top1=0.5000" in lines
    assert "\x1b[" not in out.getvalue()  # no terminal control codes in logs


def test_rich_bar_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out = Terminal()
    hook = ConsoleHook(4, 2, stream=out)
    assert hook.fancy
    drive(hook, 4)
    text = out.getvalue()
    assert "4/4" in text and "loss=0.2500" in text and "640 img/s" in text and "left" in text
    assert "eval after step 2: knn_top1=0.5000" in text
    assert hook._bar is None  # stopped at the last step: the cursor is back
    assert "step 4/4  loss" not in text  # not the plain lines


def test_dumb_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    out = Terminal()
    drive(ConsoleHook(2, 1, stream=out), 2)
    assert "step 2/2  loss=0.5000" in out.getvalue()
