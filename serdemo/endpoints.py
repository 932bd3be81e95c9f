"""What the page's events call: :class:`Endpoints` adapts each :class:`serdemo.workbench.Workbench` result to
the components' outputs (Gradio updates) or is a plain API endpoint; :mod:`serdemo.ui` wires them to the
layout. No logic of its own beyond that translation."""

from __future__ import annotations

import gradio as gr

from serdemo.cards import metrics_markdown
from serdemo.labels import ANNOTATION_LABELS
from serdemo.store import StoreError
from serdemo.uikit import (login_name, require_retrain_login, requester, resolve_annotator, text_arg, user_error,
                           voice_scope)

MAX_ID_CHARS = 128  # a clip id is a 64-character SHA-256 (or a prefix of one)
MAX_NAME_CHARS = 256  # a checkpoint name, a label, an export kind, a view


def clip_arg(value) -> str:
    """A clip id from a caller: text of at most :data:`MAX_ID_CHARS` characters (else a user error)."""
    return text_arg(value, "the clip id", MAX_ID_CHARS).strip()


def name_arg(value, what: str) -> str:
    """A short name from a caller (a model, a label, a kind): text of at most :data:`MAX_NAME_CHARS` characters."""
    return text_arg(value, what, MAX_NAME_CHARS).strip()
from serdemo.workbench import AGREEMENT_HEADERS, Workbench


class Endpoints:
    """What the page's events call: each adapts a :class:`Workbench` result to the components' outputs
    (or is a plain API endpoint). No logic of its own beyond that translation."""

    def __init__(self, bench: Workbench):
        self.bench = bench

    def warp(self, alpha, clip_id, model_name, view="difference"):
        """Re-draw the VTLP view for a new alpha (or panel view) without running the model."""
        r = self.bench.redraw(alpha, clip_arg(clip_id), name_arg(model_name, "the model name") or None,
                              name_arg(view, "the view") or "difference")
        return (gr.skip() if r.figure is None else r.figure), r.warp

    def relabel(self, clip_id: str, label: str, annotator_name: str = "", request: gr.Request = None) -> tuple:
        """Save a label for the stored clip ``clip_id`` (append-only; one of ``/labels``). The model's
        prediction, confidence and checkpoint are recorded from the store (the clip's latest analysis),
        whoever calls. Returns a status line and the counts (rows of by, name, count)."""
        label = None if label is None else name_arg(label, "the label")
        s = self.bench.save_label(clip_arg(clip_id), label, resolve_annotator(annotator_name, request))
        return s.status, s.counts

    def confirm(self, clip_id: str, annotator_name: str = "", request: gr.Request = None) -> tuple[str, list[list]]:
        """Confirm the model's prediction for the stored clip ``clip_id``: a status line and the counts."""
        s = self.bench.save_label(clip_arg(clip_id), None, resolve_annotator(annotator_name, request))
        return s.status, s.counts

    def save_on_tab(self, clip_id, label, annotator_name, request: gr.Request = None):
        """The Annotate tab's save: status, counts, the clip's history and the id it landed on."""
        clip_id = clip_arg(clip_id)
        label = None if label is None else name_arg(label, "the label")
        s = self.bench.save_label(clip_id, label, resolve_annotator(annotator_name, request))
        return s.status, s.counts, s.history, clip_id

    def confirm_on_tab(self, clip_id, annotator_name, request: gr.Request = None):
        return self.save_on_tab(clip_id, None, annotator_name, request)

    def advance(self, shown, saved, limit=50, show="unlabelled"):
        """After a save, the next queue clip loads (or nothing is selected), unless a row was clicked since."""
        if shown != saved:
            return tuple(gr.skip() for _ in range(5))
        return self.load_clip(self.bench.next_clip(saved, limit, show))

    def load_clip(self, clip):
        """The Annotate panel for ``clip`` (None: nothing selected): id, playback, history, label, description."""
        if not clip:
            return "", None, [], gr.update(value=None), self.bench.clip_panel(None)
        try:
            audio = self.bench.clip_audio(clip)
        except StoreError as exc:
            raise user_error(exc) from None
        return clip, audio, self.bench.history(clip), gr.update(value=None), self.bench.clip_panel(clip)

    def labels(self) -> list[str]:
        """The labels a clip can be given, the same on every tab and through /relabel."""
        return list(ANNOTATION_LABELS)

    def queue(self, limit: int = 50, show: str = "all") -> list[dict]:
        """Stored clips, least confident model prediction first (``show``: "all" or "unlabelled"); each a
        dict with the full clip id, source_name, duration_s, predicted, confidence, label, annotator."""
        return self.bench.queue_entries(limit, name_arg(show, "show") or "all")

    def queue_view(self, limit, show):
        return tuple(vars(self.bench.queue(limit, show)).values())

    def pick(self, evt: gr.SelectData, ids):
        """A queue row clicked: the clip its id cell names, never its position (rows move after a save)."""
        short = str((getattr(evt, "row_value", None) or [""])[0])
        clip = next((c for c in ids or [] if short and c.startswith(short)), None)
        if clip is None:
            raise user_error("that row changed while you clicked it: click the clip again")
        return self.load_clip(clip)  # the status keeps the last save's line: it names the clip it landed on

    def agreement_view(self):
        a = self.bench.agreement()
        return a.summary, gr.update(value=a.clips, headers=a.clip_headers), a.annotators

    def agreement(self) -> dict:
        """Agreement between annotators: per clip (labels by annotator, agree) and per annotator."""
        a = self.bench.agreement()
        return {"summary": a.summary, "clips": [dict(zip(a.clip_headers, r)) for r in a.clips],
                "annotators": [dict(zip(AGREEMENT_HEADERS, r)) for r in a.annotators]}

    def export(self, kind):
        """A zip of the labelled clips ("audiofolder" or "manifest"), as a file to download."""
        return str(self.bench.export(name_arg(kind, "the export kind")))

    def models(self) -> list[list[str]]:
        """Reload the checkpoints; ``[label with headline metrics, name]`` per model, default first, then dev UA."""
        self.bench.reload()
        return [[label, name] for label, name in self.bench.choices()]

    def models_on_page(self):
        self.bench.reload()
        pick = gr.update(choices=self.bench.choices(), value=self.bench.default_choice())
        return pick, pick, self.bench.models_overview()

    def model_card(self, name):
        """A checkpoint's summary, held-out metrics, confusion on its test speakers and its raw card."""
        name = name_arg(name, "the model name")
        v = self.bench.model_view(name)
        return v.summary, v.metrics, v.confusion, self.bench.cards.get(name, {})

    def model_extras(self, name):
        """The Models tab's calibration line and reliability figure for ``name``."""
        v = self.bench.model_view(name_arg(name, "the model name"))
        return v.calibration, gr.update(value=v.reliability, visible=v.reliability is not None)

    def retrain(self, name, request: gr.Request = None, annotator_name: str | None = None):
        """Fine-tune ``name`` on the store; with ``SERDEMO_AUTH`` set, only for a logged-in user. The run is the
        requester's (:func:`serdemo.uikit.requester`: the login, else the annotator name where the page sends
        it, else this browser session): only they or an admin may cancel, keep or discard it."""
        require_retrain_login(request)
        who = requester(request, text_arg(annotator_name, "the annotator name", MAX_NAME_CHARS))
        return self.bench.retrain(name_arg(name, "the model name"), login_name(request), owner=who)

    def analysis_outputs(self, a):
        """An :class:`Analysis` as the Analyse tab's outputs; the true label starts unset (no anchoring); the
        info line says how the clip was read (adapted to a voice over how many clips, or on its own)."""
        aux = f"_{a.expectation}_\n\n{a.aux_markdown}" if a.expectation else a.aux_markdown
        info = f"{a.info}\n\n{a.voice}." if a.voice else a.info
        return (a.probabilities, aux, a.figure, a.warp, a.clip_id, info,
                gr.update(choices=list(ANNOTATION_LABELS), value=None))

    def forget_voice(self, voice: str | None = None, annotator_name: str | None = None,
                     request: gr.Request = None) -> str:
        """Forget the clips analysed under voice name ``voice`` (for this login, annotator or session):
        its next clip starts the voice anew. A status line."""
        return self.bench.forget_voice(voice, voice_scope(request, annotator_name))

    def model_metrics(self, name: str) -> str:
        """A checkpoint's held-out evaluations as a Markdown table (test, dev, CV, leave-one-corpus-out)."""
        card = self.bench.cards.get(name_arg(name, "the model name"))
        return metrics_markdown(card) if card else ""

    def retrain_view(self, seen):
        v = self.bench.retrain_view(seen)
        pickers = gr.skip() if v.choices is None else gr.update(choices=v.choices)
        return v.bar, v.status, v.comparison, pickers, pickers, v.seen, gr.update(visible=v.decide)

    def retrain_progress(self) -> dict:
        """The background run's status: state, phase, step, total_steps, epoch, loss, eta_s, dev_ua, out, ..."""
        return self.bench.retrainer.status()

    def clear_analysis(self):
        """Empty the last analysis and its "Saved: ..." line: a new (or failed) one leaves nothing stale."""
        return None, "", None, "", "", gr.update(choices=[], value=None), ""
