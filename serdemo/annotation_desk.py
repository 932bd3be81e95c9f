"""The Annotate tab's actions: labels saved and their history, the queue (least confident first, its known
speakers' clips read relative to their voice), the clip panel, agreement between annotators, exports.
:class:`AnnotationDesk` is a part of :class:`serdemo.workbench.Workbench`, which re-exports every name here.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serdemo import agreement as agreement_mod
from serdemo.audio import AudioError
from serdemo.checkpoint import CheckpointError
from serdemo.export import export_zip, origin_of, remove_old_exports
from serdemo.inference import Predictor
from serdemo.labels import ANNOTATION_LABELS
from serdemo.store import StoreError
from serdemo.uikit import echo, text_arg, user_error

MAX_QUEUE = 1000  # rows the annotation queue returns at most (the page's and the API's limit)
QUEUE_MIN_VOICE_CLIPS = 2  # a known speaker's stored clips adapt together in the queue from this many on
QUEUE_VOICE_CLIPS = 40  # a known speaker's clips one queue voice rests on (more only when more are shown)
QUEUE_NEW_STATS = 64  # stored clips whose statistics one queue view computes at most (the rest: later views)
STATS_CACHE = 5000  # stored clips' statistics kept for the queue (~60 MB for the default probe)
log = logging.getLogger("serdemo.ui")  # the workbench's log, as before the split

QUEUE_HEADERS = ["clip", "model guess", "conf.", "sec", "label", "source", "voice"]  # what matters first on a phone
HISTORY_HEADERS = ["when (UTC)", "label", "annotator", "model said", "confidence", "checkpoint"]
AGREEMENT_HEADERS = ["annotator", "clips", "shared", "agreement", "mean kappa", "Cohen's kappa with each other"]


@dataclass
class Saved:
    status: str
    counts: list[list]
    history: list[list]


@dataclass
class QueueView:
    rows: list[list]  # QUEUE_HEADERS: short id, model guess, confidence, seconds, label, source, voice
    clip_ids: list[str]  # the full id of each row


@dataclass
class SpeakerGuess:
    """A stored clip read relative to the voice of its known speaker's stored clips (the queue's guess)."""

    label: str
    confidence: float
    speaker: str  # as :func:`serdemo.export.origin_of` names it, e.g. "emodb:03"
    clips: int  # how many of that speaker's clips the adaptation rests on
    checkpoint: str


@dataclass
class AgreementView:
    summary: str  # Markdown
    clips: list[list]  # short id, then one label per annotator (blank: not labelled), agree
    clip_headers: list[str]
    annotators: list[list]  # name, clips labelled, shared, agreement, mean Cohen's kappa, kappa per other


class AnnotationDesk:
    """Labels, the queue, agreement and exports.

    Part of :class:`serdemo.workbench.Workbench` (a mixin: the state it reads, ``settings``, ``store``, ``_lock`` ...,
    is the workbench's, made in its ``__init__``).
    """

    # ------------------------------------------------------------ labels
    def save_label(self, clip_id: str | None, label: str | None, annotator: str) -> Saved:
        """Append a label (``None``: confirm the model's prediction) for a stored clip; the model's
        prediction, confidence and checkpoint are recorded from the store, whoever calls."""
        clip_id = text_arg(clip_id, "the clip id", 128)
        label = None if label is None else text_arg(label, "the label", 256)
        who = text_arg(annotator, "the annotator name", 256).strip()
        try:
            if not clip_id:
                raise StoreError("analyse a clip (or pick one from the queue) first, then label it")
            if label is not None and label not in ANNOTATION_LABELS:
                raise StoreError(f"'{echo(label)}' is not one of the labels ({', '.join(ANNOTATION_LABELS)})")
            if label is None:
                predicted = self.store.clip_info(clip_id).get("predicted")
                if predicted and predicted not in ANNOTATION_LABELS:
                    raise StoreError(f"the model said '{predicted}', which is not one of the labels "
                                     f"({', '.join(ANNOTATION_LABELS)}): pick the right one and save it")
            event = self.store.label_clip(clip_id, label, who)
        except StoreError as exc:
            raise user_error(exc) from None
        n = len(self.store.history(clip_id))
        if event.predicted == event.label:
            verdict = f"confirmed as **{event.label}**"
        elif event.predicted:
            verdict = f"corrected to **{event.label}** (the model said {event.predicted})"
        else:
            verdict = f"labelled **{event.label}**"
        return Saved(f"Saved: clip `{clip_id[:12]}` {verdict} by {event.annotator} (label #{n} for this clip).",
                     self.counts(), self.history(clip_id))

    def history(self, clip_id: str | None) -> list[list]:
        """A clip's label history, oldest first."""
        clip_id = text_arg(clip_id, "the clip id", 128)
        if not clip_id:
            return []
        return [[e.created_utc.replace("T", " ").rstrip("Z"), e.label, e.annotator, e.predicted or "",
                 "" if e.confidence is None else f"{e.confidence:.0%}", e.checkpoint or ""]
                for e in self.store.history(clip_id)]

    def clip_audio(self, clip_id: str) -> tuple[int, np.ndarray]:
        """A stored clip for playback as ``(sample_rate, int16 samples)``: the page gets the samples, never the
        store's path (Gradio refuses to serve files outside its allowed folders, such as ``/data/serdemo``)."""
        path = self.store.clip_path(clip_id)
        try:
            data, rate = sf.read(str(path), dtype="int16")
        except (OSError, RuntimeError) as exc:
            raise StoreError(f"clip {clip_id[:12]} could not be read from the store") from exc
        return int(rate), data

    def queue_entries(self, limit: int = 50, show: str = "all") -> list[dict]:
        """The queue for API callers: full clip ids, numbers unrounded; ``voice``: the guess read relative to
        the clip's known speaker's stored clips (:meth:`speaker_guesses`), or None."""
        entries = self.store.queue(queue_limit(limit), unlabelled_only=show == "unlabelled")
        guesses = self.speaker_guesses(entries)
        out = []
        for q in entries:
            row = {k: q[k] for k in ("clip", "source_name", "duration_s", "predicted", "confidence", "label",
                                     "annotator")}
            g = guesses.get(q["clip"])
            row["voice"] = None if g is None else {"speaker": g.speaker, "clips": g.clips, "predicted": g.label,
                                                   "confidence": g.confidence, "checkpoint": g.checkpoint}
            out.append(row)
        return out

    def queue(self, limit: int = 50, show: str = "unlabelled") -> QueueView:
        """Stored clips, least confident model prediction first; ``show``: "unlabelled" or "all". Where a clip's
        speaker is known and the store holds more of that speaker's clips, the guess and its confidence are
        read relative to that speaker's voice (:meth:`speaker_guesses`), and the voice column says over how
        many clips; the order stays the stored predictions'."""
        entries = self.store.queue(queue_limit(limit), unlabelled_only=show == "unlabelled")
        guesses = self.speaker_guesses(entries)
        rows = []
        for q in entries:
            g = guesses.get(q["clip"])
            guess, conf = (g.label, g.confidence) if g is not None else (q["predicted"], q["confidence"])
            rows.append([q["clip"][:8], guess or "", "" if conf is None else f"{conf:.0%}", f"{q['duration_s']:.1f}",
                         q["label"] or "", (q["source_name"] or "")[:28],
                         "" if g is None else f"{g.speaker} ×{g.clips}"])
        return QueueView(rows, [q["clip"] for q in entries])

    # ------------------------------------------------------------ the queue's known speakers
    def _known_speaker(self, entry: dict) -> str:
        """The clip's speaker where known (its corpus file name or an entered speaker,
        :func:`serdemo.export.origin_of`), else ""; cached per clip (a stored clip's origin never changes)."""
        clip = entry["clip"]
        with self._lock:
            known = self._clip_speaker.get(clip)
        if known is not None:
            return known
        try:
            entered = self.store.clip_info(clip).get("speaker")
        except StoreError:
            entered = None
        known = origin_of(entry.get("source_name"), entered).speaker or ""
        with self._lock:
            self._clip_speaker[clip] = known
            while len(self._clip_speaker) > STATS_CACHE:
                self._clip_speaker.popitem(last=False)
        return known

    def _fill_statistics(self, pred_model: Predictor, clips: list[str], budget: int) -> None:
        """Compute (once; cached by clip id) the raw statistics of up to ``budget`` of ``clips`` that have
        none yet, in their order: the stored clip through :meth:`Predictor.predict_batch`."""
        layout = pred_model.voice_layout
        with self._stats_lock:
            with self._lock:
                todo = [c for c in dict.fromkeys(clips) if (c, layout) not in self._clip_stats][:budget]
            for start in range(0, len(todo), 8):
                part, waves = [], []
                for c in todo[start:start + 8]:
                    try:
                        waves.append(pred_model.load(str(self.store.clip_path(c)),
                                                     max_duration_s=self.settings.max_duration_s))
                        part.append(c)
                    except (AudioError, StoreError):
                        with self._lock:
                            self._clip_stats[(c, layout)] = None  # unreadable: not tried again
                stats = [p.statistics for p in pred_model.predict_batch(waves, alpha=None)] if waves else []
                with self._lock:
                    for c, st in zip(part, stats):
                        self._clip_stats[(c, layout)] = st
                    while len(self._clip_stats) > STATS_CACHE:
                        self._clip_stats.popitem(last=False)

    def speaker_guesses(self, entries: list[dict]) -> dict[str, SpeakerGuess]:
        """The queue's guesses for ``entries`` (store queue rows) whose speaker is known: each clip read by the
        default model relative to the voice of that speaker's stored clips (all those shown, then others up
        to :data:`QUEUE_VOICE_CLIPS` in all; at least :data:`QUEUE_MIN_VOICE_CLIPS`). Statistics are computed lazily
        (at most :data:`QUEUE_NEW_STATS` clips per call, the shown ones first) and cached by clip id, so the
        first view of a large store adapts over fewer clips than later ones. Empty when the default model does
        not adapt."""
        shown = {q["clip"]: self._known_speaker(q) for q in entries}
        wanted = {spk for spk in shown.values() if spk}
        if not wanted:
            return {}
        try:
            pred_model = self.predictor(None)
        except CheckpointError:
            return {}
        if not getattr(pred_model, "adapts", False):
            return {}
        members: dict[str, list[str]] = {spk: [c for c, k in shown.items() if k == spk] for spk in wanted}
        for q in self.store.queue(MAX_QUEUE, unlabelled_only=False):  # the same speakers' other stored clips
            spk = self._known_speaker(q) if q["clip"] not in shown else ""
            if spk in members and len(members[spk]) < QUEUE_VOICE_CLIPS:
                members[spk].append(q["clip"])
        order = [c for c in shown if shown[c] in wanted] + [c for m in members.values() for c in m if c not in shown]
        try:
            self._fill_statistics(pred_model, order, QUEUE_NEW_STATS)
        except (AudioError, RuntimeError, ValueError) as exc:  # the queue still shows the stored guesses
            log.warning("queue: statistics of stored clips could not be computed: %s", exc)
        layout = pred_model.voice_layout
        with self._lock:
            stats = {c: self._clip_stats.get((c, layout)) for m in members.values() for c in m}
        out: dict[str, SpeakerGuess] = {}
        for spk, clips in members.items():
            have = [c for c in clips if stats.get(c) is not None]
            targets = [c for c in have if c in shown]
            if len(have) < QUEUE_MIN_VOICE_CLIPS or not targets:
                continue
            voice = np.stack([stats[c] for c in have])
            probs = pred_model.predict_from_statistics(np.stack([stats[c] for c in targets]), voice_stats=voice)
            for c, p in zip(targets, probs):
                label = max(p, key=p.get)
                out[c] = SpeakerGuess(label, float(p[label]), spk, len(have), pred_model.name)
        with self._lock:
            self._speaker_guesses.update(out)
            for c in out:
                self._speaker_guesses.move_to_end(c)
            while len(self._speaker_guesses) > STATS_CACHE:
                self._speaker_guesses.popitem(last=False)
        return out

    def counts(self) -> list[list]:
        """Clips per current label (each clip once), then save events per annotator (every save counted)."""
        c = self.store.counts()
        return [["clips", k, v] for k, v in c["label"].items()] + [["saves", k, v] for k, v in c["annotator"].items()]

    def clip_panel(self, clip_id: str | None) -> str:
        """What the Annotate panel says about its clip: source file, corpus, speaker, duration, model guess."""
        if not clip_id:
            return "_no clip selected: click a queue row_"
        try:
            info = self.store.clip_info(clip_id)
        except StoreError as exc:
            raise user_error(exc) from None
        source = info.get("source_name") or "recording"
        origin = origin_of(source, info.get("speaker"))  # what the file name tells, as the export reads it
        corpus = origin.corpus or "unknown"
        info["speaker"] = origin.speaker.partition(":")[2] or origin.speaker
        guess = info.get("predicted") or "?"
        conf = "" if info.get("confidence") is None else f" ({info['confidence']:.0%})"
        with self._lock:
            adapted = self._speaker_guesses.get(clip_id)
        voice = "" if adapted is None else (
            f" · read relative to speaker {html.escape(adapted.speaker)}'s voice over {adapted.clips} stored clips "
            f"(`{html.escape(adapted.checkpoint)}`): {html.escape(adapted.label)} ({adapted.confidence:.0%})")
        return (f"**{html.escape(source)}** · corpus {html.escape(str(corpus))} · speaker "
                f"{html.escape(str(info.get('speaker') or 'unknown'))} · {float(info.get('duration_s') or 0):.1f} s · "
                f"model guess {html.escape(guess)}{conf}{voice} · clip `{clip_id[:12]}`")

    def next_clip(self, after: str | None, limit: int = 50, show: str = "unlabelled") -> str | None:
        """The clip to load after saving ``after``: the queue's next clip after it (in the queue's order,
        whether or not ``after`` is still listed), else its first one; None when nothing else is queued."""
        ids = [q["clip"] for q in self.store.queue(queue_limit(limit), unlabelled_only=show == "unlabelled")
               if q["clip"] != after]
        if not ids:
            return None
        order = {q["clip"]: i for i, q in enumerate(self.store.queue(MAX_QUEUE, unlabelled_only=False))}
        here = order.get(after, -1)
        return next((c for c in ids if order.get(c, -1) > here), ids[0])

    def agreement(self) -> AgreementView:
        """Per clip every annotator's label and whether they agree; per annotator counts and kappas."""
        result = agreement_mod.compute(self.store)
        names = [a.annotator for a in result.annotators]
        multi = [c for c in result.clips if len(c.labels) > 1]
        clips = [[c.clip[:8], *[c.labels.get(n, "") for n in names],
                  {True: "yes", False: "no", None: "—"}[c.agree]] for c in sorted(multi, key=lambda c: c.agree is not False)]
        annotators = []
        for a in result.annotators:
            kappas = [k for k in a.kappa.values() if k is not None]
            annotators.append([a.annotator, a.n_labelled, a.n_shared,
                               "—" if a.agreement is None else f"{a.agreement:.0%}",
                               "—" if not kappas else f"{np.mean(kappas):.2f}",
                               ", ".join(f"{o} {k:.2f}" for o, k in a.kappa.items() if k is not None) or "—"])
        if result.fleiss_kappa is not None:
            fleiss = (f"Fleiss' kappa **{result.fleiss_kappa:.2f}** over {result.fleiss_clips} clips labelled by "
                      f"{result.fleiss_raters} annotators each")
        else:
            fleiss = "Fleiss' kappa needs at least two clips labelled by the same number (≥ 2) of annotators"
        agreed = sum(c.agree is True for c in multi)
        summary = (f"{len(result.clips)} labelled clips, {len(multi)} labelled by more than one annotator"
                   + (f", all agree on {agreed} ({agreed / len(multi):.0%})" if multi else "")
                   + f". {fleiss}. Kappas: scikit-learn (Cohen, per pair of annotators on their shared clips) "
                     "and statsmodels (Fleiss); 1 is perfect agreement, 0 is chance.")
        return AgreementView(summary, clips, ["clip", *names, "agree"], annotators)

    def export(self, kind: str) -> Path:
        """A zip of the labelled clips: "audiofolder" (``metadata.csv`` + ``audio/``, for the ``datasets``
        audiofolder builder) or "manifest" (the training manifest ``manifest.csv`` + ``audio/``), made by
        :func:`serdemo.export.export_zip`; exports served more than an hour ago are deleted first. The zip is
        written into Gradio's cache folder, which Gradio serves from without copying it (a zip elsewhere was
        copied there: two copies of every export); the housekeeping sweep ages it out with the uploads."""
        from serdemo.housekeeping import gradio_cache_dir

        remove_old_exports()  # older exports, written to the temp folder
        remove_old_exports(gradio_cache_dir())
        kind = text_arg(kind, "the export kind", 256)
        try:  # nothing labelled is a StoreError too
            return export_zip(self.store, kind if kind in ("audiofolder", "manifest") else "audiofolder",
                              work_dir=gradio_cache_dir()).archive
        except StoreError as exc:
            raise user_error(exc) from None

def queue_limit(limit) -> int:
    """At most :data:`MAX_QUEUE` rows, whatever a caller asks for (the page offers up to that too)."""
    try:
        n = int(limit or 50)
    except (TypeError, ValueError):
        n = 50
    return min(MAX_QUEUE, max(1, n))
