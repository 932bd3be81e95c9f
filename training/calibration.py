"""Temperature scaling (Guo et al. 2017) on the dev speakers, and how well probabilities are calibrated.

A model's probabilities are ``softmax(logits / T)`` with one scalar ``T`` fitted on dev by minimising
the negative log-likelihood (it never changes which class wins, so UA and WA stay as they are).
ECE is the expected calibration error: the mean over confidence bins of |accuracy - confidence|,
weighted by the share of clips in the bin.
"""

from __future__ import annotations

import numpy as np
import torch

N_BINS = 10


def fit_temperature(log_probs: np.ndarray, y: np.ndarray, max_iter: int = 200) -> float:
    """``log_probs (n, classes)`` (any logits up to a per-row constant), labels ``y (n,)`` -> T > 0."""
    if len(y) == 0:
        return 1.0
    z = torch.as_tensor(log_probs, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def scale(log_probs: np.ndarray, temperature: float, bias=None) -> np.ndarray:
    """``softmax(logits / T + bias)`` in float64: exactly what the Predictor serves."""
    z = torch.as_tensor(log_probs, dtype=torch.float64) / temperature
    if bias is not None:
        z = z + torch.as_tensor(bias, dtype=torch.float64)
    return torch.softmax(z, dim=1).numpy()


def fit_temperature_bias(logits: np.ndarray, y: np.ndarray, max_iter: int = 300) -> tuple[float, list[float]]:
    """One temperature and one bias per class (the first fixed at 0) minimising the negative log-likelihood
    of ``softmax(logits / T + b)`` (float64). The biases correct a systematic lean towards a class that
    held-out corpora show (a temperature alone cannot); classes absent from ``y`` keep bias 0."""
    if len(y) == 0:
        return 1.0, [0.0] * logits.shape[1]
    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.long)
    present = torch.zeros(z.shape[1], dtype=torch.float64)
    present[torch.unique(t)] = 1.0
    present[0] = 0.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, b], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp() + b * present, t)
        loss.backward()
        return loss

    opt.step(closure)
    temperature = float(np.clip(log_t.exp().item(), 0.05, 20.0))
    bias = (b * present).detach().numpy()
    return temperature, [round(float(v), 4) for v in np.clip(bias, -50, 50)]


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per confidence bin: its range, the clips in it, their mean confidence and their accuracy."""
    conf = probs.max(1)
    right = probs.argmax(1) == np.asarray(y)
    edges = np.linspace(0, 1, n_bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        n = int(inside.sum())
        out.append({"from": round(float(lo), 2), "to": round(float(hi), 2), "n": n,
                    "confidence": round(float(conf[inside].mean()), 4) if n else None,
                    "accuracy": round(float(right[inside].mean()), 4) if n else None})
    return out


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    bins = reliability(probs, y, n_bins)
    n = max(1, sum(b["n"] for b in bins))
    return round(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"]), 4)


def calibrate(dev_log_probs, dev_y, test_log_probs=None, test_y=None) -> dict:
    """The card's ``calibration`` block: T from dev, ECE before/after on dev (and test, for information),
    and the reliability bins after scaling on test (dev when there is no test set)."""
    temperature = fit_temperature(dev_log_probs, dev_y)
    out = {"method": "temperature scaling (one T on the dev speakers' negative log-likelihood)",
           "temperature": round(temperature, 4),
           "ece_dev_before": ece(scale(dev_log_probs, 1.0), dev_y),
           "ece_dev_after": ece(scale(dev_log_probs, temperature), dev_y)}
    ref_p, ref_y, where = (test_log_probs, test_y, "test") if test_log_probs is not None and len(test_y) else \
        (dev_log_probs, dev_y, "dev")
    if where == "test":
        out["ece_test_before"] = ece(scale(ref_p, 1.0), ref_y)
        out["ece_test_after"] = ece(scale(ref_p, temperature), ref_y)
    out["reliability"] = {"set": where, "bins": reliability(scale(ref_p, temperature), ref_y)}
    return out


def rescore_test(block: dict, test_log_probs: np.ndarray, test_y: np.ndarray, note: str) -> dict:
    """``block`` (from :func:`calibrate`) with its test ECE and reliability bins recomputed from another
    model's test log-probabilities at the same temperature: the model that ships, when it is not the one
    whose dev predictions set T (a probe refitted on train + dev after T was fitted); ``note`` says so."""
    if not len(test_y):
        return block
    t, b = block["temperature"], block.get("bias")
    return {**block, "ece_test_before": ece(scale(test_log_probs, 1.0), test_y),
            "ece_test_after": ece(scale(test_log_probs, t, b), test_y),
            "reliability": {"set": "test", "bins": reliability(scale(test_log_probs, t, b), test_y)}, "note": note}


CAL_FAMILIES = ("shared", "split")


def fit_family(family: str, tasks: list) -> dict:
    """Calibration ``{"clip": (T, bias), "voice": (T, bias)}`` fitted on ``tasks`` (``[(logits per kind, y)]``):
    ``shared``: one fit for clips read on their own and adapted clips alike; ``split``: one each."""
    clip_l = [lg["none"] for lg, _ in tasks]
    voice_l = [lg[k] for lg, _ in tasks for k in ("10", "all")]
    clip_y = [y for _, y in tasks]
    voice_y = [y for _, y in tasks for _k in ("10", "all")]
    if family == "shared":
        both = fit_temperature_bias(np.concatenate(clip_l + voice_l), np.concatenate(clip_y + voice_y))
        return {"clip": both, "voice": both}
    return {"clip": fit_temperature_bias(np.concatenate(clip_l), np.concatenate(clip_y)),
            "voice": fit_temperature_bias(np.concatenate(voice_l), np.concatenate(voice_y))}


def apply_family(cal: dict, kind: str, logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of ``logits`` read as ``kind`` ("none": clip by clip; otherwise adapted)."""
    t, b = cal["clip"] if kind == "none" else cal["voice"]
    return scale(logits, t, b)


def choose_calibration(tasks: list) -> str:
    """The family with the lower mean ECE on each task when fitted on the others (clip by clip and adapted)."""
    if len(tasks) < 2:
        return "shared"
    scores = {}
    for family in CAL_FAMILIES:
        e = []
        for i, (lg, y) in enumerate(tasks):
            cal = fit_family(family, tasks[:i] + tasks[i + 1:])
            e += [ece(apply_family(cal, k, lg[k]), y) for k in ("none", "10", "all")]
        scores[family] = float(np.mean(e))
    return min(CAL_FAMILIES, key=scores.get)
