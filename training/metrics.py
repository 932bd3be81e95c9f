"""WA, UA, macro-F1 and confusion matrices, overall and per corpus (computed by scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return confusion_matrix(np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), labels=list(range(n_classes)))


def scores(y_true, y_pred, classes) -> dict:
    """WA (accuracy), UA (mean recall over the classes present), macro-F1 (over the same classes),
    per-class recall, confusion (rows: true class)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n = len(classes)
    cm = confusion(y_true, y_pred, n) if len(y_true) else np.zeros((n, n), dtype=np.int64)
    present = [i for i in range(n) if cm[i].sum() > 0]
    nan = float("nan")
    if not present:
        return {"n": 0, "wa": nan, "ua": nan, "macro_f1": nan, "recall": {}, "classes": list(classes),
                "confusion": cm.tolist()}
    recall = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return {
        "n": int(len(y_true)),
        "wa": float(accuracy_score(y_true, y_pred)),
        "ua": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "recall": {classes[i]: float(r) for i, r in zip(present, recall)},
        "classes": list(classes),
        "confusion": cm.tolist(),
    }


def scores_by_group(y_true, y_pred, groups, classes) -> dict:
    """``{"overall": scores, "<group>": scores, ...}`` (groups are usually corpora)."""
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    out = {"overall": scores(y_true, y_pred, classes)}
    for g in sorted(set(groups.tolist())):
        sel = groups == g
        out[g] = scores(y_true[sel], y_pred[sel], classes)
    return out


def table(results: dict, title: str = "") -> str:
    """A readable table of UA / WA / macro-F1 / n per group."""
    lines = [title] if title else []
    lines.append(f"{'set':<12} {'UA':>6} {'WA':>6} {'F1':>6} {'n':>6}")
    for name, s in results.items():
        lines.append(f"{name:<12} {s['ua']:>6.3f} {s['wa']:>6.3f} {s['macro_f1']:>6.3f} {s['n']:>6d}")
    return "\n".join(lines)


def confusion_text(s: dict) -> str:
    classes = s["classes"]
    w = max(len(c) for c in classes) + 1
    head = " " * w + "".join(f"{c[:6]:>7}" for c in classes)
    rows = [f"{c:<{w}}" + "".join(f"{v:>7d}" for v in row) for c, row in zip(classes, s["confusion"])]
    return "\n".join([head, *rows])
