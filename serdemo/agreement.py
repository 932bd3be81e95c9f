"""Inter-annotator agreement over the store's labels (each annotator's latest label of each clip).

Per clip: every annotator's label and whether they agree. Per annotator: how many clips they labelled,
how often they agree with the others on shared clips, and Cohen's kappa with each other annotator
(scikit-learn). Overall: Fleiss' kappa (statsmodels) over the clips labelled by the most common number
of annotators (at least two); Fleiss' kappa needs the same number of raters per clip.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from serdemo.store import Store


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
    kappa: dict[str, float | None] = field(default_factory=dict)  # other annotator -> Cohen's kappa


@dataclass
class Agreement:
    clips: list[ClipAgreement]
    annotators: list[AnnotatorAgreement]
    fleiss_kappa: float | None
    fleiss_clips: int  # clips the Fleiss figure is computed on
    fleiss_raters: int  # annotators per clip in that figure


def _kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two label lists; None when it is undefined (under two clips, or one label only)."""
    if len(a) < 2 or len(set(a) | set(b)) < 2:
        return None
    value = cohen_kappa_score(a, b)
    return None if np.isnan(value) else float(value)


def compute(store: Store) -> Agreement:
    """Agreement over every clip of ``store`` that has a label."""
    per_clip: dict[str, dict[str, str]] = defaultdict(dict)
    for ev in store.annotator_labels():
        per_clip[ev.clip][ev.annotator] = ev.label
    clips = [ClipAgreement(c, dict(sorted(labels.items()))) for c, labels in per_clip.items()]
    names = sorted({a for labels in per_clip.values() for a in labels})
    annotators = []
    for name in names:
        mine = {c: labels for c, labels in per_clip.items() if name in labels}
        shared = {c: labels for c, labels in mine.items() if len(labels) > 1}
        pairs = [(labels[name], other) for labels in shared.values() for o, other in labels.items() if o != name]
        agreement = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
        kappa = {}
        for other in names:
            if other == name:
                continue
            both = [c for c, labels in per_clip.items() if name in labels and other in labels]
            kappa[other] = _kappa([per_clip[c][name] for c in both], [per_clip[c][other] for c in both])
        annotators.append(AnnotatorAgreement(name, len(mine), len(shared), agreement, kappa))
    fleiss, n_clips, raters = None, 0, 0
    counts = Counter(len(labels) for labels in per_clip.values() if len(labels) >= 2)
    if counts:
        raters = max(counts, key=lambda k: (counts[k], k))
        rows = [list(labels.values()) for labels in per_clip.values() if len(labels) == raters]
        n_clips = len(rows)
        categories = sorted({label for row in rows for label in row})
        if n_clips >= 2 and len(categories) >= 2:
            codes = np.array([[categories.index(label) for label in row] for row in rows])
            table, _ = aggregate_raters(codes, n_cat=len(categories))
            value = fleiss_kappa(table, method="fleiss")
            fleiss = None if np.isnan(value) else float(value)
    return Agreement(clips, annotators, fleiss, n_clips, raters)


def pairwise_kappas(result: Agreement) -> dict[tuple[str, str], float | None]:
    """Cohen's kappa for every pair of annotators (each pair once, names sorted)."""
    by_name = {a.annotator: a for a in result.annotators}
    return {(a, b): by_name[a].kappa.get(b) for a, b in combinations(sorted(by_name), 2)}
