"""Inter-annotator agreement over the store's labels (each annotator's latest label of each clip).

Per clip: every annotator's label and whether they agree. Per annotator: how many clips they labelled,
how often they agree with the others on shared clips, and Cohen's kappa with each annotator they
share clips with (the same value as scikit-learn's ``cohen_kappa_score``, computed from the pair's
confusion counts). Overall: Fleiss' kappa (statsmodels) over the clips labelled by the most common
number of annotators (at least two); Fleiss' kappa needs the same number of raters per clip.

Cost: the figures are kept per store database and updated from the labels saved since the last call
(labels are append-only). A new label of a clip touches only the pairs of that clip's annotators, and
only touched pairs have their kappa recomputed; pairs that share no clip are never formed. A call with
no new label returns the previous result. :func:`stats` counts the work done, for tests.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from serdemo.store import LabelEvent, Store


@dataclass
class ClipAgreement:
    clip: str
    labels: dict[str, str]  # annotator -> label

    @property
    def agree(self) -> bool | None:
        """True when every annotator gave the same label; None with fewer than two annotators."""
        return None if len(self.labels) < 2 else len(set(self.labels.values())) == 1


@dataclass
class AnnotatorAgreement:
    annotator: str
    n_labelled: int
    n_shared: int  # clips this annotator shares with at least one other annotator
    agreement: float | None  # share of pairwise comparisons on shared clips that agree
    kappa: dict[str, float | None] = field(default_factory=dict)  # annotator sharing clips -> Cohen's kappa


@dataclass
class Agreement:
    clips: list[ClipAgreement]
    annotators: list[AnnotatorAgreement]
    fleiss_kappa: float | None
    fleiss_clips: int  # clips the Fleiss figure is computed on
    fleiss_raters: int  # annotators per clip in that figure


Pair = tuple[str, str]  # two annotator names, sorted


def kappa_from_confusion(confusion: Counter) -> float | None:
    """Cohen's kappa from ``{(label of a, label of b): count}``; None when undefined (under two clips, or
    both annotators used one and the same label). Equals ``sklearn.metrics.cohen_kappa_score``."""
    n = sum(confusion.values())
    if n < 2:
        return None
    rows, cols = Counter(), Counter()
    agree = 0
    for (a, b), count in confusion.items():
        rows[a] += count
        cols[b] += count
        agree += count if a == b else 0
    if len(set(rows) | set(cols)) < 2:
        return None
    p_observed = agree / n
    p_expected = sum(rows[c] * cols[c] for c in rows) / (n * n)
    if p_expected >= 1.0:
        return None
    return (p_observed - p_expected) / (1.0 - p_expected)


def _kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two aligned label lists (see :func:`kappa_from_confusion`)."""
    return kappa_from_confusion(Counter(zip(a, b)))


class AgreementIndex:
    """Agreement state of one store database, updated label by label."""

    def __init__(self):
        self.lock = threading.Lock()
        self.last_id = 0
        self.per_clip: dict[str, dict[str, str]] = {}  # clip -> annotator -> latest label
        self.pairs: dict[Pair, Counter] = {}  # pair -> {(label of first, label of second): clips}
        self.kappas: dict[Pair, float | None] = {}
        self.dirty: set[Pair] = set()
        self.result: Agreement | None = None
        self.stats: Counter = Counter()

    def apply(self, ev: LabelEvent) -> None:
        """One saved label (events in id order): the annotator's latest label of that clip."""
        self.stats["events"] += 1
        self.last_id = max(self.last_id, ev.id)
        labels = self.per_clip.setdefault(ev.clip, {})
        old = labels.get(ev.annotator)
        labels[ev.annotator] = ev.label
        self.result = None
        if old == ev.label:
            return
        for other, theirs in labels.items():
            if other == ev.annotator:
                continue
            first = ev.annotator < other
            pair = (ev.annotator, other) if first else (other, ev.annotator)
            confusion = self.pairs.setdefault(pair, Counter())
            if old is not None:
                key = (old, theirs) if first else (theirs, old)
                confusion[key] -= 1
                if confusion[key] <= 0:
                    del confusion[key]
            confusion[(ev.label, theirs) if first else (theirs, ev.label)] += 1
            self.dirty.add(pair)
            self.stats["pair_updates"] += 1

    def build(self) -> Agreement:
        for pair in self.dirty:
            self.kappas[pair] = kappa_from_confusion(self.pairs[pair])
            self.stats["kappa_computations"] += 1
        self.dirty.clear()
        clips = [ClipAgreement(c, dict(sorted(self.per_clip[c].items()))) for c in sorted(self.per_clip)]
        n_labelled, n_shared = Counter(), Counter()
        for labels in self.per_clip.values():
            for name in labels:
                n_labelled[name] += 1
                if len(labels) > 1:
                    n_shared[name] += 1
        compared, agreed = Counter(), Counter()
        partners: dict[str, dict[str, float | None]] = defaultdict(dict)
        for (a, b), confusion in sorted(self.pairs.items()):
            n = sum(confusion.values())
            if n == 0:
                continue
            same = sum(v for (x, y), v in confusion.items() if x == y)
            for me, other in ((a, b), (b, a)):
                compared[me] += n
                agreed[me] += same
                partners[me][other] = self.kappas.get((a, b))
        annotators = [AnnotatorAgreement(name, n_labelled[name], n_shared[name],
                                         agreed[name] / compared[name] if compared[name] else None,
                                         dict(sorted(partners[name].items())))
                      for name in sorted(n_labelled)]
        fleiss, n_clips, raters = self._fleiss()
        self.stats["builds"] += 1
        self.result = Agreement(clips, annotators, fleiss, n_clips, raters)
        return self.result

    def _fleiss(self) -> tuple[float | None, int, int]:
        counts = Counter(len(labels) for labels in self.per_clip.values() if len(labels) >= 2)
        if not counts:
            return None, 0, 0
        raters = max(counts, key=lambda k: (counts[k], k))
        rows = [list(labels.values()) for labels in self.per_clip.values() if len(labels) == raters]
        categories = sorted({label for row in rows for label in row})
        if len(rows) < 2 or len(categories) < 2:
            return None, len(rows), raters
        code = {label: i for i, label in enumerate(categories)}
        table, _ = aggregate_raters(np.array([[code[label] for label in row] for row in rows]), n_cat=len(categories))
        value = fleiss_kappa(table, method="fleiss")
        return (None if np.isnan(value) else float(value)), len(rows), raters


_INDEXES: dict[tuple, AgreementIndex] = {}
_INDEXES_LOCK = threading.Lock()


def _key(store: Store) -> tuple:
    path = Path(store.db_path).resolve()
    try:
        st = os.stat(path)
        return str(path), st.st_dev, st.st_ino
    except OSError:
        return str(path), None, None


def index_of(store: Store) -> AgreementIndex:
    """The cached agreement state of ``store``'s database (one per database file, shared by every
    :class:`Store` object opened on it)."""
    key = _key(store)
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is None:
            index = _INDEXES[key] = AgreementIndex()
        return index


def compute(store: Store) -> Agreement:
    """Agreement over every clip of ``store`` that has a label (updated from the labels saved since the
    last call; the same object again when nothing was saved). Treat the result as read-only."""
    index = index_of(store)
    with index.lock:
        if index.last_id and store.last_label_id() < index.last_id:  # the database was replaced
            fresh = AgreementIndex()
            fresh.stats = index.stats
            fresh.stats["rebuilds"] += 1
            index.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "lock"})
        for ev in store.labels_since(index.last_id):
            index.apply(ev)
        return index.result if index.result is not None else index.build()


def stats(store: Store) -> dict[str, int]:
    """Work done for ``store`` so far: ``events`` read, ``pair_updates``, ``kappa_computations``, ``builds``."""
    counted = index_of(store).stats
    return {k: counted.get(k, 0) for k in ("events", "pair_updates", "kappa_computations", "builds", "rebuilds")}


def pairwise_kappas(result: Agreement) -> dict[Pair, float | None]:
    """Cohen's kappa for every pair of annotators that share a clip (each pair once, names sorted)."""
    return {(a.annotator, other): k for a in result.annotators for other, k in a.kappa.items() if a.annotator < other}
