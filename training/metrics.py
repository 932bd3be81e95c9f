"""WA, UA, macro-F1 and confusion matrices, overall and per corpus."""

from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def scores(y_true, y_pred, classes) -> dict:
    """WA (accuracy), UA (mean recall over the classes present), macro-F1, per-class recall, confusion."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n = len(classes)
    cm = confusion(y_true, y_pred, n)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = support > 0
    recall = np.divide(np.diag(cm), support, out=np.zeros(n), where=present)
    precision = np.divide(np.diag(cm), predicted, out=np.zeros(n), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    return {
        "n": int(len(y_true)),
        "wa": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "ua": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "recall": {c: float(r) for c, r, p in zip(classes, recall, present) if p},
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
