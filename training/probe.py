"""The linear probe on the encoder (the strong reference row, and a model in its own right).

Per clip: each chosen layer's mean and standard deviation over the speech frames (the same function
the shipped :class:`serdemo.models.probe.LinearProbe` runs; with ``frame_norm`` each frame's state is
layer-normalised first), standardised with training statistics, then a class-balanced linear classifier
(scikit-learn): a multinomial logistic regression (its ``C`` chosen on dev UA) or, with
``classifier="lda"``, a linear discriminant analysis with shrinkage (equal class priors; its shrinkage
chosen on dev UA the same way). Both end as the weights of one linear layer.

Fit-time options, screened on dev (``training.evaluate --screen``); each ends as ordinary weights
of the same linear layer, so the shipped model and its format do not change with them:

- ``pool``: ``"mean+std"`` (both statistics), ``"mean"`` or ``"std"`` (the other statistic's weights are 0);
- ``nap``: nuisance attribute projection: the ``k`` directions along which the training speakers' mean
  vectors differ most (voice, corpus, language, channel) are projected out before the regression; since
  the projection is linear it is folded into the weights (``W (I - U Uᵀ)``);
- ``balance``: ``"class"`` (every class weighs the same) or ``"corpus"`` (every class weighs the same and,
  within it, every corpus that has it), so the largest corpus does not set the decision boundary alone.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from serdemo.models.encoder import encoder_info, speech_statistics
from serdemo.models.probe import LinearProbe, checked_classifier
from serdemo.voice import NormStats, VoiceRule, class_offsets, speaker_offsets

C_GRID = (0.01, 0.03, 0.1)  # logistic regression's inverse regularisation; an LDA's grid is its shrinkage
REGULARISATION = {"logistic": "C", "lda": "shrinkage"}  # each classifier's knob, as recipes and cards name it
POOLS = ("mean+std", "mean", "std")
BALANCES = ("class", "corpus")


def statistics(items: list[tuple[np.ndarray, np.ndarray]], layers: list[int], frame_norm: bool = False) -> np.ndarray:
    """``[(states (7, T, 512) float16, speech (T,))]`` -> ``(n, len(layers) * 1024)`` float32. ``frame_norm``:
    each frame's state layer-normalised first (what :class:`LinearProbe` does with ``frame_norm``)."""
    out = []
    for states, speech in items:
        s = torch.from_numpy(states[layers].astype(np.float32))[None]
        m = torch.from_numpy(np.asarray(speech, dtype=bool))[None]
        if not bool(m.any()):
            m = torch.ones_like(m)
        out.append(speech_statistics(s, m, frame_norm)[0].numpy())
    return np.stack(out)


def fit_options(named: dict) -> dict:
    """The fit-time options a screen variant or a recipe's hparams name (the others keep their defaults)."""
    return {k: named[k] for k in ("pool", "nap", "balance", "classifier") if k in named}


VOICE_TRAIN = ("mean", "aware")  # a training speaker's voice: its mean, or the mean its emotions do not explain


def voice_rule(hparams: dict) -> VoiceRule:
    """The recipe's voice adaptation (``voice``, ``voice_tau``, ``voice_posterior``), checked."""
    return VoiceRule(hparams.get("voice", "none"), hparams.get("voice_tau", 3.0), hparams.get("voice_posterior", False))


def voice_normalise(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, n_classes: int, rule: VoiceRule,
                    train: str = "mean") -> tuple[np.ndarray, NormStats]:
    """Training clips' statistics relative to their own speaker's voice (:mod:`serdemo.voice`), and what the
    model keeps of the training voices. Clips whose speaker is ``""`` or unknown (the app's store) are read
    relative to the training voices' mean only: one shared name is not one voice."""
    if train not in VOICE_TRAIN:
        raise ValueError(f"voice_train must be one of {', '.join(VOICE_TRAIN)}, not {train!r}")
    x = np.asarray(x)
    speakers = np.asarray(speakers)
    known = np.array([s != "" and not s.endswith(":unknown") for s in speakers], dtype=bool)
    global_mean = x[known].mean(0, dtype=np.float64) if known.any() else x.mean(0, dtype=np.float64)
    # float32 like the statistics themselves (a few float64 copies of thousands of clips' statistics were most of
    # a retraining's memory); the means and the stored normalisation stay float64
    xa = x.astype(np.float32, copy=True)
    xa -= global_mean.astype(np.float32)
    typical = np.ones(x.shape[1])
    if known.any():
        off, scale, typical = speaker_offsets(x[known], speakers[known], global_mean,
                                              y[known] if train == "aware" else None, n_classes,
                                              rule.mode == "meanvar")
        xa[known] = (xa[known] - off) / scale
    return xa, NormStats(global_mean, typical, class_offsets(xa, np.asarray(y), n_classes))


def default_grid(classifier: str = "logistic") -> tuple[float, ...]:
    """The regularisation values tried on dev when a recipe names none: C, or an LDA's shrinkage."""
    return C_GRID if checked_classifier(classifier) == "logistic" else (0.6, 0.8, 0.9)


def pool_columns(layers, width: int, pool: str = "mean+std") -> np.ndarray:
    """Indices, in :func:`statistics`' layout (each layer a ``[mean (width), std (width)]`` block, in order;
    ``width``: the encoder's), of the statistics ``pool`` keeps of the blocks ``layers`` (an int n: the
    first n blocks)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    half = np.arange(width)
    keep = {"mean+std": np.arange(2 * width), "mean": half, "std": half + width}[pool]
    blocks = range(layers) if isinstance(layers, int) else layers
    return np.concatenate([keep + l * 2 * width for l in blocks])


def sample_weights(y: np.ndarray, corpora: np.ndarray | None, balance: str) -> np.ndarray:
    """Per-clip weights, mean 1: every class the same total; with ``"corpus"`` also every corpus within a class."""
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {', '.join(BALANCES)}, not {balance!r}")
    if balance == "corpus" and corpora is None:
        raise ValueError("corpus balance needs the training clips' corpora")
    groups = np.asarray(corpora) if balance == "corpus" else np.zeros(len(y), dtype=int)
    w = np.zeros(len(y), dtype=np.float64)
    for cls in np.unique(y):
        in_cls = y == cls
        cells = np.unique(groups[in_cls])
        for g in cells:
            cell = in_cls & (groups == g)
            w[cell] = 1.0 / (cell.sum() * len(cells))
    return w * len(y) / w.sum()


def nuisance_directions(z: np.ndarray, speakers: np.ndarray, k: int) -> np.ndarray:
    """``(dim, k')`` orthonormal: the top principal directions of the training speakers' mean vectors
    (``k' = min(k, speakers - 1)``); emotions are spread within every speaker, so these carry who and
    where, not how. Clips whose speaker is ``""`` do not shape the directions: the app's store has no
    speakers, and its clips, one user's labels, need not spread over the emotions."""
    names = np.unique(speakers[speakers != ""])  # "": no speaker known (the app's store), left out
    k = min(int(k), len(names) - 1)
    if k <= 0:
        return np.zeros((z.shape[1], 0), dtype=np.float64)
    means = np.stack([z[speakers == s].mean(0) for s in names]).astype(np.float64)
    _, _, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    return vt[:k].T


class ShrinkageLDA:
    """scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=a, priors=equal)``, solved by a
    Cholesky factorisation of the pooled shrunk covariance instead of a least-squares SVD: the same
    ``coef_`` and ``intercept_`` (a test checks them against scikit-learn's) in a fifth of the time, which is
    what makes a nested screen of many fits affordable on two cores."""

    def __init__(self, shrinkage: float):
        self.shrinkage = float(shrinkage)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "ShrinkageLDA":
        from scipy.linalg import cho_factor, cho_solve

        x = np.asarray(x)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        d = x.shape[1]
        cov = np.zeros((d, d))
        means = []
        # one class at a time in float64 (never the whole matrix at once): the working memory of a fit on
        # thousands of clips stays a few of the d x d matrices
        for c in self.classes_:
            xc = np.array(x[y == c], dtype=np.float64)
            mu = xc.mean(0)
            means.append(mu)
            if len(xc) > 1:
                xc -= mu
                s = xc.T @ xc
                s /= len(xc)
            else:
                s = np.zeros((d, d))
            del xc
            mu_t = np.trace(s) / d
            s *= (1.0 - self.shrinkage) / len(self.classes_)
            s.flat[:: d + 1] += self.shrinkage * mu_t / len(self.classes_)
            cov += s
            del s
        means = np.stack(means)
        self.priors_ = np.full(len(self.classes_), 1.0 / len(self.classes_))  # equal: UA, not the training mix
        self.means_ = means
        coef = cho_solve(cho_factor(cov, overwrite_a=True), means.T).T
        self.coef_ = coef
        self.intercept_ = -0.5 * np.einsum("ij,ij->i", means, coef) + np.log(1.0 / len(self.classes_))
        if len(self.classes_) == 2:  # scikit-learn keeps one row for two classes
            self.coef_ = (coef[1] - coef[0])[None]
            self.intercept_ = np.array([self.intercept_[1] - self.intercept_[0]])
        self.n_features_in_ = d
        return self

    def decision_function(self, x):
        scores = np.asarray(x) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, x):
        """scikit-learn's: a softmax over the classes' scores (a logistic function of the one score for two)."""
        scores = self.decision_function(x)
        if scores.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores))
            return np.stack([1.0 - p1, p1], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x):
        scores = self.decision_function(x)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[scores.argmax(1)]


def fit_probe(x_train, y_train, x_dev, y_dev, n_classes: int, c_grid=None, seed: int = 0, *,
              pool: str = "mean+std", nap: int = 0, balance: str = "class", classifier: str = "logistic",
              speakers=None, corpora=None, width: int | None = None):
    """-> (fitted classifier, mean, std, chosen regularisation, dev UA). Standardisation from train only.

    ``c_grid``: the values tried, each scored on dev UA: C for ``"logistic"``, the shrinkage (0..1) for
    ``"lda"`` (default :func:`default_grid`). The returned classifier reads every statistic (``pool`` and
    ``nap`` are folded into its weights), so ``clf.predict((x - mean) / std)`` is the probe's prediction
    whatever the options, and ``clf.coef_`` / ``clf.intercept_`` are its linear layer."""
    if checked_classifier(classifier) == "lda" and balance != "class":
        raise ValueError("an LDA balances classes by equal priors; it takes no corpus balance")
    c_grid = default_grid(classifier) if c_grid is None else tuple(c_grid)
    if classifier == "lda" and not all(0 <= c <= 1 for c in c_grid):
        raise ValueError(f"an LDA's shrinkage lies within 0..1, not {c_grid}")
    mean, std = x_train.mean(0, dtype=np.float64), x_train.std(0, dtype=np.float64) + 1e-5
    m32, s32 = mean.astype(np.float32), std.astype(np.float32)
    zt, zd = (np.asarray(x_train, np.float32) - m32) / s32, (np.asarray(x_dev, np.float32) - m32) / s32
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if pool == "mean+std":
        cols = np.arange(x_train.shape[1])
    elif width is None:
        raise ValueError(f"pool {pool!r} needs the encoder's width")
    else:
        cols = pool_columns(x_train.shape[1] // (2 * width), width, pool)
    zt_fit = zt[:, cols]
    u = None
    if nap:
        if speakers is None:
            raise ValueError("nap needs the training clips' speakers")
        u = nuisance_directions(zt_fit, np.asarray(speakers), nap)
        zt_fit = zt_fit - (zt_fit @ u) @ u.T
    weights = sample_weights(np.asarray(y_train), corpora, balance)
    # Fewer clips than statistics (a retraining run on a few labels): the L2-penalised optimum lies in the span
    # of the training rows (representer theorem), so fit on the rows' coordinates in an orthonormal basis of
    # that span and map the weights back. The same optimum, in seconds fewer: the penalty and every score
    # are unchanged by an orthonormal change of basis.
    basis = None
    # (an LDA's shrinkage pulls towards a multiple of the identity in the statistics' own space, which a
    # change to the clips' span would alter, so it is always fitted in full)
    if classifier == "logistic" and 2 * zt_fit.shape[0] <= zt_fit.shape[1]:
        basis, r = np.linalg.qr(zt_fit.T)  # (statistics, clips), (clips, clips)
        zt_fit = r.T
    best = None
    for c in c_grid:
        if classifier == "lda":
            # equal priors over the classes present: UA, not the training mix, is what a prior should serve
            clf = ShrinkageLDA(c).fit(zt_fit, y_train)
        else:
            clf = LogisticRegression(C=c, max_iter=300, random_state=seed)
            clf.fit(zt_fit, y_train, sample_weight=weights)
        coef = clf.coef_ if basis is None else clf.coef_ @ basis.T
        if u is not None:
            coef = coef - (coef @ u) @ u.T
        full = np.zeros((coef.shape[0], zt.shape[1]), dtype=np.float64)
        full[:, cols] = coef
        clf.coef_ = full
        clf.n_features_in_ = zt.shape[1]
        ua = balanced_accuracy_score(y_dev, clf.predict(zd)) if len(y_dev) else 0.0
        if best is None or ua > best[4]:
            best = (clf, mean, std, c, ua)
    return best


def to_model(clf, mean, std, classes: list[str], n_layers: int, layers: list[int],
             frame_norm: bool = False, rule: VoiceRule | None = None, norm: NormStats | None = None,
             ood: dict | None = None, clip: tuple | None = None, encoder=None) -> LinearProbe:
    """The fitted classifier as a :class:`LinearProbe` (classes the training data lacked get -1e4 bias);
    with ``rule`` and ``norm`` (:func:`voice_normalise`), a probe that adapts to voices."""
    rule = rule or VoiceRule()
    model = LinearProbe(0, {"emotion": len(classes)}, n_layers=n_layers, layers=layers, frame_norm=frame_norm,
                        voice=rule.mode, voice_tau=rule.tau, voice_posterior=rule.posterior,
                        ood_components=0 if ood is None else len(ood["basis"]), clip_head=clip is not None,
                        encoder=encoder)
    with torch.no_grad():
        if clip is not None:  # (classifier, mean, std) of the head for clips read on their own
            c_clf, c_mean, c_std = clip
            model.clip_mean.copy_(torch.as_tensor(c_mean, dtype=torch.float32))
            model.clip_std.copy_(torch.as_tensor(c_std, dtype=torch.float32))
            _set_linear(model.clip_heads["emotion"], c_clf, len(classes))
        if ood is not None:
            for name in ("centre", "scale", "basis", "threshold"):
                getattr(model, f"ood_{name}").copy_(torch.as_tensor(np.asarray(ood[name]), dtype=torch.float32))
        if model.adapts:
            if norm is None:
                raise ValueError("a probe that adapts to voices needs the training voices' statistics")
            model.voice_mean.copy_(torch.as_tensor(norm.global_mean, dtype=torch.float64))
            model.voice_var.copy_(torch.as_tensor(norm.global_var, dtype=torch.float64))
            model.class_offsets.copy_(torch.as_tensor(norm.class_off, dtype=torch.float64))
        model.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        model.std.copy_(torch.as_tensor(std, dtype=torch.float32))
        _set_linear(model.heads["emotion"], clf, len(classes))
    return model.eval()


@torch.no_grad()
def _set_linear(layer, clf, n_classes: int) -> None:
    """A fitted classifier's ``coef_``/``intercept_`` into ``layer`` (classes it never saw get -1e4 bias)."""
    w = torch.zeros(n_classes, layer.in_features)
    b = torch.full((n_classes,), -1e4)
    coef, icpt = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: scikit-learn keeps one row
        coef, icpt = np.concatenate([-coef, coef]) / 2, np.concatenate([-icpt, icpt]) / 2
    for row, cls in enumerate(clf.classes_):
        w[int(cls)] = torch.as_tensor(coef[row], dtype=torch.float32)
        b[int(cls)] = float(icpt[row])
    layer.weight.copy_(w)
    layer.bias.copy_(b)


OOD_QUANTILE = 0.99  # the share of unheard speakers of the training corpora that a threshold leaves unflagged


def fit_ood(x: np.ndarray, speakers: np.ndarray, k: int, seed: int = 0) -> dict:
    """The out-of-domain score's parts from raw training statistics ``x``: centre and scale (standardisation),
    the top ``k`` principal directions, and the threshold: the 99th percentile of the score of clips whose
    speakers the directions did not see (training speakers split in two halves, each scored by the other's
    directions), so about 1 % of unheard speakers of known corpora are flagged."""
    x = np.asarray(x, np.float64)
    speakers = np.asarray(speakers)
    centre, scale = x.mean(0), x.std(0) + 1e-5

    def basis(rows):
        from sklearn.utils.extmath import randomized_svd

        z = (x[rows] - centre) / scale
        return randomized_svd(z - z.mean(0), k, random_state=seed)[2]

    def resid(rows, b):
        z = (x[rows] - centre) / scale
        return ((z ** 2).sum(1) - ((z @ b.T) ** 2).sum(1)) / (z.shape[1] - k)

    names = np.unique(speakers)
    rng = np.random.default_rng(seed)
    half = np.isin(speakers, rng.permutation(names)[: len(names) // 2])
    scores = np.concatenate([resid(~half, basis(half)), resid(half, basis(~half))]) if 0 < half.sum() < len(x) \
        else resid(np.arange(len(x)), basis(np.arange(len(x))))
    return {"centre": centre, "scale": scale, "basis": basis(np.arange(len(x))),
            "threshold": float(np.quantile(scores, OOD_QUANTILE))}


def fit_voice_probe(x, y, speakers, corpora, n_classes: int, classes: list[str], n_layers: int, layers: list[int],
                    frame_norm: bool, hparams: dict, c, seed: int = 0, x_dev=None, y_dev=None, speakers_dev=None,
                    with_ood: bool = True, encoder=None):
    """One probe fit as the recipe says, voice adaptation included -> ``(model, chosen c, dev UA)``.

    With ``hparams['voice']`` each training speaker is read relative to its own voice
    (:func:`voice_normalise`); dev clips (choosing ``c`` when several are tried) relative to their speaker's
    plain mean. ``c``: a value, or a tuple of values tried on dev. With ``hparams['ood_components']`` (and
    ``with_ood``) the model also carries its out-of-domain score (:func:`fit_ood`)."""
    rule = voice_rule(hparams)
    opts = fit_options(hparams)
    grid = tuple(c) if isinstance(c, (tuple, list)) else (c,)
    x_dev = x[:0] if x_dev is None else x_dev
    y_dev = y[:0] if y_dev is None else y_dev
    norm = None
    x_raw = x
    if rule.mode != "none":
        x, norm = voice_normalise(x, y, speakers, n_classes, rule, hparams.get("voice_train", "mean"))
        if len(x_dev):
            x_dev = x_dev - norm.global_mean
            for s in np.unique(speakers_dev):
                x_dev[speakers_dev == s] -= x_dev[speakers_dev == s].mean(0)
    k = int(hparams.get("ood_components", 0) or 0) if with_ood else 0
    ood = fit_ood(x_raw, speakers, k, seed) if k else None
    width = encoder_info(encoder).width
    clf, mean, std, chosen, dev_ua = fit_probe(x, y, x_dev, y_dev, n_classes, c_grid=grid, seed=seed, **opts,
                                               speakers=speakers, corpora=corpora, width=width)
    clip = None
    if norm is not None and hparams.get("clip_head"):  # the same classifier on the statistics as they are
        c_clf, c_mean, c_std, _, _ = fit_probe(x_raw - norm.global_mean.astype(np.float32), y, x_dev[:0], y_dev[:0], n_classes,
                                               c_grid=(chosen,), seed=seed, **opts, speakers=speakers, corpora=corpora,
                                               width=width)
        clip = (c_clf, c_mean, c_std)
    return (to_model(clf, mean, std, classes, n_layers, layers, frame_norm, rule, norm, ood, clip, encoder),
            chosen, dev_ua)


@torch.no_grad()
def voice_logits(model: LinearProbe, x: np.ndarray, speakers: np.ndarray | None,
                 known: np.ndarray | None = None) -> np.ndarray:
    """Logits ``(n, classes)`` float64 of raw statistics ``x``: each clip relative to its speaker's voice
    estimated by the model from that speaker's clips (all of them, or those ``known`` marks; ``speakers``
    None, or a model that does not adapt: each clip read on its own)."""
    xt = torch.as_tensor(np.asarray(x, np.float32))
    if speakers is None or not getattr(model, "adapts", False):
        return model.logits_from_statistics(xt)["emotion"].double().numpy()
    out = np.zeros((len(x), model.heads["emotion"].out_features))
    speakers = np.asarray(speakers)
    known = np.ones(len(x), dtype=bool) if known is None else np.asarray(known, dtype=bool)
    for s in np.unique(speakers):
        idx = np.flatnonzero(speakers == s)
        voice = model.voice_offsets(np.asarray(x)[idx[known[idx]]])
        out[idx] = model.logits_from_statistics(xt[idx], voice)["emotion"].double().numpy()
    return out


@torch.no_grad()
def corpus_calibration(fit, x, y, speakers, corpora, seed: int = 0) -> dict:
    """The calibration chosen on held-out *corpora* of the training data: each corpus is scored by a probe
    ``fit(mask)`` fitted on the others, clip by clip and adapted to each speaker (all its clips, and 10 drawn
    at random); which family (one temperature and bias for every result, or one for clips read on their own
    and one for adapted results) is chosen by leaving each corpus out of the calibration fit in turn
    (:func:`training.calibration.choose_calibration`), then fitted on all of them (float64, the logits as
    served)."""
    from training.calibration import apply_family, choose_calibration, ece, fit_family, scale

    names = sorted(set(np.asarray(corpora)))
    if len(names) < 2:
        return {}
    rng = np.random.default_rng(seed)
    tasks = []
    for c in names:
        held = np.flatnonzero(np.asarray(corpora) == c)
        model = fit(np.asarray(corpora) != c)
        spk = np.asarray(speakers)[held]
        # 10 random clips of each speaker estimate its voice; every clip of the speaker is then read by it
        ten = np.zeros(len(held), dtype=bool)
        for s in np.unique(spk):
            ten[rng.choice(np.flatnonzero(spk == s), min(10, int((spk == s).sum())), replace=False)] = True
        logits = {"none": voice_logits(model, x[held], None), "all": voice_logits(model, x[held], spk),
                  "10": voice_logits(model, x[held], spk, ten)}
        tasks.append((logits, y[held]))
    family = choose_calibration(tasks)
    cal = fit_family(family, tasks)
    (t_clip, b_clip), (t_voice, b_voice) = cal["clip"], cal["voice"]
    z = {k: np.concatenate([lg[k] for lg, _ in tasks]) for k in ("none", "10", "all")}
    yy = np.concatenate([yt for _, yt in tasks])
    return {"method": f"temperature and per-class biases ({family}: "
                      + ("one for every result" if family == "shared" else "one for clips read on their own, one "
                         "for adapted results") + ") fitted on held-out corpora of the training data (each corpus "
                      "scored by a probe fitted on the others), on the logits as served (float64)",
            "family": family, "temperature": round(t_clip, 4), "bias": b_clip,
            "voice": {"temperature": round(t_voice, 4), "bias": b_voice},
            "corpora": names,
            "ece_heldout_corpora_before": ece(scale(z["none"], 1.0), yy),
            "ece_heldout_corpora_after": ece(apply_family(cal, "none", z["none"]), yy),
            "ece_heldout_corpora_adapted_after": ece(apply_family(cal, "all", z["all"]), yy)}
