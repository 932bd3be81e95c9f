"""The linear probe on the encoder (the strong reference row, and a model in its own right).

Per clip: each chosen layer's mean and standard deviation over the speech frames (the same function
the shipped :class:`serdemo.models.probe.LinearProbe` runs), standardised with training statistics,
then a class-balanced multinomial logistic regression (scikit-learn). ``C`` is chosen on dev UA.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from serdemo.models.encoder import layer_statistics
from serdemo.models.probe import LinearProbe

C_GRID = (0.01, 0.03, 0.1)


def statistics(items: list[tuple[np.ndarray, np.ndarray]], layers: list[int]) -> np.ndarray:
    """``[(states (7, T, 512) float16, speech (T,))]`` -> ``(n, len(layers) * 1024)`` float32."""
    out = []
    for states, speech in items:
        s = torch.from_numpy(states[layers].astype(np.float32))[None]
        m = torch.from_numpy(np.asarray(speech, dtype=bool))[None]
        if not bool(m.any()):
            m = torch.ones_like(m)
        out.append(layer_statistics(s, m)[0].numpy())
    return np.stack(out)


def fit_probe(x_train, y_train, x_dev, y_dev, n_classes: int, c_grid=C_GRID, seed: int = 0):
    """-> (fitted LogisticRegression, mean, std, chosen C, dev UA). Standardisation from train only."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    zt, zd = (x_train - mean) / std, (x_dev - mean) / std
    best = None
    for c in c_grid:
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=300, random_state=seed)
        clf.fit(zt, y_train)
        ua = balanced_accuracy_score(y_dev, clf.predict(zd)) if len(y_dev) else 0.0
        if best is None or ua > best[4]:
            best = (clf, mean, std, c, ua)
    return best


def to_model(clf: LogisticRegression, mean, std, classes: list[str], n_layers: int, layers: list[int]) -> LinearProbe:
    """The fitted regression as a :class:`LinearProbe` (classes the training data lacked get -1e4 bias)."""
    model = LinearProbe(0, {"emotion": len(classes)}, n_layers=n_layers, layers=layers)
    with torch.no_grad():
        model.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        model.std.copy_(torch.as_tensor(std, dtype=torch.float32))
        w = torch.zeros(len(classes), len(mean))
        b = torch.full((len(classes),), -1e4)
        coef, icpt = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # binary: scikit-learn keeps one row
            coef, icpt = np.concatenate([-coef, coef]) / 2, np.concatenate([-icpt, icpt]) / 2
        for row, cls in enumerate(clf.classes_):
            w[int(cls)] = torch.as_tensor(coef[row], dtype=torch.float32)
            b[int(cls)] = float(icpt[row])
        model.heads["emotion"].weight.copy_(w)
        model.heads["emotion"].bias.copy_(b)
    return model.eval()
