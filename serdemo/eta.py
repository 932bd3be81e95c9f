"""The ETA table: how long a retraining run and its phases take on a 2-core CPU, in one place for both sides of
the process boundary. The app (:mod:`serdemo.retrain`, before a run has counted its data) and the trainer
(:mod:`training.fit`, :mod:`training.probe_fit`, once it has) read the same figures; no torch, no Gradio.
"""

from __future__ import annotations

# seconds a run takes on a 2-core CPU with the encoder-state cache filled (the three corpora), per
# architecture: the ETA shown before the run has counted its data (training.fit's first phase too)
FIRST_GUESS_S = {"probe": 70.0, "localatt": 240.0, "multitask": 240.0, "cnnlstm": 1800.0}
ENCODE_S_PER_CLIP = 0.06  # encoder pass of one clip not yet in the cache (bf16, 2 threads)
PROBE_FIT_S = 12.0  # one fit of the regularisation grid on ~3,300 clips (2-core CPU)


def human_duration(seconds: float | None) -> str:
    """A wait or an ETA in whole units: ``42 s``, ``3 min 05 s`` (``15 min`` on the minute), ``1 h 02 min``;
    ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60:02d} s" if s % 60 else "")
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
