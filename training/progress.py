"""``OUT/progress.jsonl``: a machine-readable account of a training run, one JSON object per line.

Every line has the same keys:

=============  ==============================================================================
``event``      ``start`` | ``step`` | ``epoch`` | ``done`` | ``error``
``epoch``      the epoch the event belongs to, counted from 1 (0 before the first)
``epochs``     epochs the run is configured for
``step``       optimiser steps taken since the run began (a resumed run keeps counting)
``total_steps`` steps in the whole run (``epochs`` x steps per epoch)
``loss``       training loss of that step (``step``) or the epoch's mean (``epoch``), over all ranks
``dev_ua``     dev UA of the latest finished epoch (null before the first)
``eta_s``      estimated seconds left, from this process's pace so far (null until one step ran)
``elapsed_s``  seconds since this process started training
``time``       wall-clock time, seconds since the epoch (Unix time)
=============  ==============================================================================

``phase`` comes first, from the run's first second, once per phase before training (``phase``: what
runs now, e.g. "reading the corpora"; ``eta_s``: an estimate for the whole run from the data sizes);
``start`` adds ``resumed`` (bool), the split sizes and ``store`` (how many stored clips train, and why
the others do not); ``epoch`` adds ``best_epoch``, ``improved`` and
``dev_wa``; ``done`` adds ``test_ua``; ``error`` adds ``message``. Each line is written with a single
``write`` on a file opened for appending and flushed at once, so a reader sees whole lines only
(it should still skip a last line that does not parse). A fresh run truncates the file; ``--resume``
appends to it. Only the main rank writes it. ``serdemo.retrain`` reads it (without importing this).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

FILE = "progress.jsonl"
EVENTS = ("phase", "start", "step", "epoch", "done", "error")


class Progress:
    """Appends events to ``path``; does nothing when ``enabled`` is false (non-main ranks)."""

    def __init__(self, path, enabled: bool = True, append: bool = False, epochs: int = 0, total_steps: int = 0):
        self.path, self.enabled = Path(path), enabled
        self.epochs, self.total_steps = epochs, total_steps
        self.started = time.time()
        self.steps_this_run = 0  # steps taken by this process, for the pace
        self.epoch, self.step, self.dev_ua = 0, 0, None
        self.estimate_s: float | None = None  # before the first step: an estimate from the data sizes
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                self.path.write_text("")

    def eta_s(self) -> float | None:
        if self.steps_this_run == 0:
            return self.estimate_s
        pace = (time.time() - self.started) / self.steps_this_run
        return round(pace * max(0, self.total_steps - self.step), 1)

    def phase(self, name: str, estimate_s: float | None = None, **extra) -> dict:
        """A ``phase`` line: what the run does now and, when known, an estimate of the seconds left."""
        if estimate_s is not None:
            self.estimate_s = round(float(estimate_s), 1)
        return self.write("phase", phase=name, **extra)

    def begin_training(self) -> None:
        """From here on the ETA is this process's pace over its training steps."""
        self.started = time.time()

    def write(self, event: str, loss: float | None = None, **extra) -> dict:
        if event not in EVENTS:
            raise ValueError(f"unknown progress event {event!r}")
        now = time.time()
        record = {"event": event, "epoch": self.epoch, "epochs": self.epochs, "step": self.step,
                  "total_steps": self.total_steps, "loss": _finite(loss),
                  "dev_ua": self.dev_ua, "eta_s": 0.0 if event == "done" else self.eta_s(),
                  "elapsed_s": round(now - self.started, 2), "time": round(now, 3), **extra}
        if self.enabled:
            line = (json.dumps(record) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write of a whole line: readers never see half of one
            finally:
                os.close(fd)
        return record


def append_jsonl(path, record: dict) -> None:
    """Append one JSON line (debug traces: ``OUT/trace-rank<R>.jsonl``)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _finite(value) -> float | None:
    """JSON has no NaN: a missing or non-finite loss is written as null."""
    return round(float(value), 5) if value is not None and math.isfinite(value) else None
