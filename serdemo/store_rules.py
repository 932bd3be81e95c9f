"""Which stored labels a retraining may use, and the words for why one may not: one rule for both sides of the
process boundary. ``training.data.Data`` applies it to the clips a run has read (its store report, written into
the run's progress); :func:`serdemo.retrain_plan.retrain_plan` applies it before any run, from the store, the
base checkpoint's card and the corpus files. No torch, no Gradio.

A stored clip does not train, checked in this order, when: its label is not in the model's label set; its
audio cannot be read; it is cut from a recording of a held-out (dev/test) speaker; it is the same audio as a
corpus clip (whose own label counts). What each side can decide differs only in how it learns the facts (the
run by reading and hashing every clip; the plan from names and the card, so a renamed copy is the run's alone).
"""

from __future__ import annotations

from typing import Callable

WHY_UNREADABLE = "audio could not be read"
WHY_HELD_OUT = "cut from a recording of a held-out (dev/test) speaker"
WHY_COPY = "the same audio as a corpus clip"
WHY_SHORT = {WHY_UNREADABLE: "unreadable audio", WHY_HELD_OUT: "held-out speaker", WHY_COPY: "copy of a corpus clip"}
WHY_MEANS = {  # ... and what that means, for someone deciding whether to fine-tune
    WHY_UNREADABLE: "its stored file is missing or damaged",
    WHY_HELD_OUT: "that speaker is kept out so the new model is scored fairly",
    WHY_COPY: "the corpus already holds this clip under its own label, and that label counts",
}


def why_not_in_label_set(label_set: str) -> str:
    """The reason for a label the model's label set (named ``label_set``) does not map."""
    return f"label not in the {label_set} label set"


def why_left_out(label_set: str, mapped: bool, readable: bool, held_out: bool,
                 copy: bool | Callable[[], bool]) -> str:
    """Why a stored clip does not train ("" when it does), the first that holds in the rule's order. ``copy`` may
    be a callable, asked only when the earlier reasons do not hold (finding a copy can mean decoding a file)."""
    if not mapped:
        return why_not_in_label_set(label_set)
    if not readable:
        return WHY_UNREADABLE
    if held_out:
        return WHY_HELD_OUT
    if copy() if callable(copy) else copy:
        return WHY_COPY
    return ""
