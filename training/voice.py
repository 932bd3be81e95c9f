"""Voice adaptation, screened and measured on the probe's per-clip statistics.

``python -m training.voice --json .cache/voice.jsonl`` reads every clip's statistics (the probe's: states
2-4, each frame layer-normalised, mean and std over speech) from the encoder cache once, then, with nothing
but numpy and scikit-learn:

- **screens** how to normalise a voice (the variants in :data:`VARIANTS`), nested: for every outer fold
  (each corpus held out in turn; each of four speaker folds in turn) the variant is chosen on inner folds of
  the remaining speakers only (leave-one-corpus-out among the training corpora), then fitted on all of them
  and scored on the outer fold, so each outer figure is held out from the choice;
- **measures** each outer fold with K unlabelled clips per test speaker: none (clip by clip), 3, 10 and all,
  drawn at random (three draws), and with a skewed draw (80 % of the K = 10 clips of one emotion, as a real
  speaker's recordings are);
- **calibrates** inside the same nesting: a temperature and per-class biases fitted on the inner held-out
  corpora's logits (float64, exactly what is served), ECE on the outer fold.

Every finished outer fold is appended to the JSON-lines file, so a killed run keeps what it finished.
The adaptation itself is :mod:`serdemo.voice` (the same arithmetic the shipped model runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serdemo.voice import NormStats, VoiceRule, adapt_offsets, class_offsets, normalise, speaker_offsets

from training.calibration import apply_family, choose_calibration, fit_family
from training.probe import ShrinkageLDA

log = logging.getLogger(__name__)

DEFAULT_CORPORA = ["emodb=../shared/data/emodb", "ravdess=../shared/data/ravdess", "nemo=../shared/data/nemo",
                   "emovo=../shared/data/emovo"]
LAYERS = [2, 3, 4]

# What the screen chooses among. ``train``: how each training speaker is normalised by its own clips
# ("none": not at all, as shipped before; "mean": its mean; "meanvar": mean and variance; "aware": the mean
# of what its emotions do not explain, from the labels). ``tau``: shrinkage of a test voice's estimate
# towards the training voices' by clip count (n / (n + tau) of the way). ``posterior``: a test voice's
# estimate discounts each clip's predicted emotion (iterated); otherwise its plain mean.
VARIANTS = [
    {"name": "none", "train": "none", "tau": 0.0, "posterior": False},
    # two heads: clips read on their own by a head trained on statistics as they are ("none"), adapted clips by
    # the voice-normalised head
    {"name": "two heads mean tau3", "train": "mean", "tau": 3.0, "posterior": False, "clip_head": True},
    {"name": "two heads meanvar tau3", "train": "meanvar", "tau": 3.0, "posterior": False, "clip_head": True},
    {"name": "mean tau0", "train": "mean", "tau": 0.0, "posterior": False},
    {"name": "mean tau3", "train": "mean", "tau": 3.0, "posterior": False},
    {"name": "mean tau10", "train": "mean", "tau": 10.0, "posterior": False},
    {"name": "meanvar tau3", "train": "meanvar", "tau": 3.0, "posterior": False},
    {"name": "mean tau3 post", "train": "mean", "tau": 3.0, "posterior": True},
]
DRAWS = ("none", "3", "10", "all", "skew10")
SHRINKAGE = 0.8


@dataclass
class Table:
    x: np.ndarray  # (n, dim) float32 raw statistics
    y: np.ndarray  # (n,) class index
    speaker: np.ndarray
    corpus: np.ndarray
    classes: list


def stats_table(specs: list[str], label_set: str = "ekman7", out: Path | None = None, encoder: str = "whisper-base",
                layers: list[int] = LAYERS) -> Table:
    """Every clip's probe statistics of ``layers`` of ``encoder`` (from the encoder cache; what is missing is
    encoded), cached in ``out``."""
    if out is not None and out.is_file():
        z = np.load(out, allow_pickle=False)
        return Table(z["x"], z["y"], z["speaker"], z["corpus"], list(z["classes"]))
    from serdemo.labels import get_label_set
    from training.data import WaveCache, build_examples, load_corpora
    from training.encoded import EncodedCache, wave_digest
    from training.probe import statistics

    ls = get_label_set(label_set)
    utts, _ = load_corpora(specs)
    examples, _ = build_examples(utts, ls, [])
    waves, cache = WaveCache(), EncodedCache(encoder=encoder)
    rows = []
    for i, e in enumerate(examples):
        w = waves.get(e.utt.path)
        d = wave_digest(w)
        item = cache.lookup(d)
        if item is None:
            cache.fill([w], [waves.speech(e.utt.path)], digests=[d])
            item = cache.lookup(d)
        rows.append(statistics([item], layers, frame_norm=True)[0])
        cache.memory.clear()
        waves.memory.clear()
        if i % 500 == 0:
            print(f"\rstatistics {i}/{len(examples)}", end="", file=sys.stderr)
    t = Table(np.stack(rows).astype(np.float32), np.array([e.targets["emotion"] for e in examples]),
              np.array([e.utt.speaker for e in examples]), np.array([e.utt.corpus for e in examples]),
              list(ls.classes))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, x=t.x, y=t.y, speaker=t.speaker, corpus=t.corpus, classes=np.array(t.classes))
    return t


class Probe:
    """One variant fitted: training speakers normalised by ``variant['train']``, standardised, an LDA."""

    def __init__(self, variant: dict, shrinkage: float = SHRINKAGE):
        self.v, self.shrinkage = variant, shrinkage
        self.cols = variant.get("cols")  # the statistics it reads (a layer set's columns); None: all

    def _take(self, x):
        return x if self.cols is None else x[:, self.cols]

    def fit(self, x, y, speaker, n_classes: int):
        v = self.v
        x = self._take(x)
        self.global_mean = x.mean(0).astype(np.float64)
        if v["train"] == "none":
            xa = x.astype(np.float64) - self.global_mean
            self.rule = VoiceRule("none", 0.0, False)
            self.ns = NormStats(self.global_mean, np.ones_like(self.global_mean), np.zeros((n_classes, x.shape[1])))
        else:
            aware = v["train"] == "aware"
            var = v["train"] == "meanvar"
            off, scale, typical = speaker_offsets(x, speaker, self.global_mean, y if aware else None, n_classes, var)
            xa = (x - self.global_mean - off) / scale
            self.rule = VoiceRule("meanvar" if var else "mean", float(v["tau"]), bool(v["posterior"]))
            self.ns = NormStats(self.global_mean, typical, class_offsets(xa, y, n_classes))
        self.mean, self.std = xa.mean(0), xa.std(0) + 1e-5
        z = (xa - self.mean) / self.std
        self.clf = ShrinkageLDA(self.shrinkage).fit(z, y)
        self.n_classes = n_classes
        w = np.zeros((n_classes, x.shape[1]))
        b = np.full(n_classes, -1e4)
        w[self.clf.classes_] = self.clf.coef_
        b[self.clf.classes_] = self.clf.intercept_
        self.w, self.b = w, b
        return self

    def logits_fn(self):
        def f(xa):
            return ((xa - self.mean) / self.std) @ self.w.T + self.b
        return f

    def logits(self, x, voice_sets: list[np.ndarray] | None) -> np.ndarray:
        """``x (n, dim)`` raw statistics; ``voice_sets[i]``: the raw statistics clip i adapts to (None: none)."""
        out = np.zeros((len(x), self.n_classes))
        x = self._take(x)
        if voice_sets is None or self.rule.mode == "none":
            return self.logits_fn()(normalise(x, self.ns, np.zeros(x.shape[1]), np.ones(x.shape[1])))
        # clips sharing one voice set share one estimate
        groups: dict[int, list[int]] = {}
        keyed = {}
        for i, vs in enumerate(voice_sets):
            k = id(vs)
            keyed[k] = vs
            groups.setdefault(k, []).append(i)
        for k, idx in groups.items():
            vs = self._take(keyed[k])
            off, scale = adapt_offsets(vs, self.ns, self.rule, self.logits_fn())
            out[idx] = self.logits_fn()(normalise(x[idx], self.ns, off, scale))
        return out


def draws(t: Table, test: np.ndarray, rng: np.random.Generator, kind: str) -> list[np.ndarray] | None:
    """Each test clip's adaptation set under ``kind`` (one set per speaker, shared by its clips)."""
    if kind == "none":
        return None
    sets: list = [None] * len(t.x)
    for spk in np.unique(t.speaker[test]):
        idx = test[t.speaker[test] == spk]
        if kind == "all":
            pick = idx
        elif kind.startswith("skew"):
            k = int(kind[4:])
            emos = np.unique(t.y[idx])
            main = rng.choice(emos)
            same, other = idx[t.y[idx] == main], idx[t.y[idx] != main]
            n_main = min(len(same), int(round(0.8 * k)))
            pick = np.concatenate([rng.choice(same, n_main, replace=False),
                                   rng.choice(other, min(len(other), k - n_main), replace=False)])
        else:
            pick = rng.choice(idx, min(len(idx), int(kind)), replace=False)
        vs = t.x[pick]
        for i in idx:
            sets[i] = vs
    return [sets[i] for i in test]


def ua(y, logits) -> float:
    """Mean recall over the classes present in ``y`` (predictions range over every class of the model)."""
    pred = logits.argmax(1)
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


_FITS: dict = {}


def fitted(t: Table, train: np.ndarray, variant: dict) -> Probe:
    """The variant's probe on ``train``; variants that normalise training voices alike share one fit (only
    their rule at inference differs)."""
    import copy
    import hashlib

    cols = variant.get("cols")
    key = (variant["train"], hashlib.sha1(np.sort(train).tobytes()).hexdigest(), len(t.x),
           None if cols is None else hashlib.sha1(np.asarray(cols).tobytes()).hexdigest())
    if key not in _FITS:
        if len(_FITS) > 64:
            _FITS.clear()
        _FITS[key] = Probe(variant).fit(t.x[train], t.y[train], t.speaker[train], len(t.classes))
    probe = copy.copy(_FITS[key])
    probe.v = variant
    if variant["train"] != "none":
        probe.rule = VoiceRule(probe.rule.mode, float(variant["tau"]), bool(variant["posterior"]))
    return probe


def score_task(t: Table, train: np.ndarray, test: np.ndarray, variant: dict, kinds=DRAWS, seeds=(0, 1, 2)):
    """UA on ``test`` per draw kind (mean over seeds for the random ones) and the logits of each kind."""
    probe = fitted(t, train, variant)
    clip = fitted(t, train, dict(VARIANTS[0], cols=variant.get("cols"))) if variant.get("clip_head") else probe
    res, logits = {}, {}
    for kind in kinds:
        runs = [0] if kind in ("none", "all") else list(seeds)
        uas, lg = [], None
        for s in runs:
            rng = np.random.default_rng(1000 + s)
            lg = (clip if kind == "none" else probe).logits(t.x[test], draws(t, test, rng, kind))
            uas.append(ua(t.y[test], lg))
        res[kind] = float(np.mean(uas))
        logits[kind] = lg
    return res, logits, probe


def selection_score(res: dict) -> float:
    """What the inner screen maximises: clip by clip, 10 random clips, 10 skewed clips and all clips alike."""
    return float(np.mean([res["none"], res["10"], res["skew10"], res["all"]]))


def inner_tasks(t: Table, pool: np.ndarray, n_folds: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """The dev tasks of ``pool`` (indices; no outer test speaker), as the project's screen has them: each
    corpus of the pool held out in turn (cross-corpus dev) and three folds of the pool's speakers (k-fold
    dev), so the choice weighs unheard corpora and unheard speakers of known corpora alike."""
    corpora = np.unique(t.corpus[pool])
    tasks = [(pool[t.corpus[pool] != c], pool[t.corpus[pool] == c]) for c in corpora]
    spk = np.unique(t.speaker[pool])
    order = spk[np.random.default_rng(7).permutation(len(spk))]
    for f in range(n_folds):
        held = np.isin(t.speaker[pool], order[f::n_folds])
        tasks.append((pool[~held], pool[held]))
    return tasks


def calibrated(logits, t, b):
    z = np.asarray(logits, np.float64) / t + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def ece(probs, y, n_bins=10) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return float(sum(abs((pred[bins == k] == y[bins == k]).mean() - conf[bins == k].mean()) * (bins == k).mean()
                     for k in range(n_bins) if (bins == k).any()))


def outer_folds(t: Table, scheme: str, n_folds: int = 4, seed: int = 0):
    if scheme == "loco":
        for c in np.unique(t.corpus):
            yield c, np.flatnonzero(t.corpus != c), np.flatnonzero(t.corpus == c)
    else:
        spk = np.unique(t.speaker)
        rng = np.random.default_rng(seed)
        order = spk[rng.permutation(len(spk))]
        for f in range(n_folds):
            held = set(order[f::n_folds])
            test = np.flatnonzero(np.isin(t.speaker, list(held)))
            yield f"fold{f}", np.flatnonzero(~np.isin(t.speaker, list(held))), test


def inner_screen(t: Table, pool: np.ndarray, variants=VARIANTS) -> tuple[dict, dict, int]:
    """Every variant on the dev tasks of ``pool`` (:func:`inner_tasks`): ``(scores per variant, [(logits per
    draw, y)] per variant in task order, number of cross-corpus tasks, which come first)``. A variant's score is
    the mean of its cross-corpus and its k-fold :func:`selection_score`."""
    n_loco = len(np.unique(t.corpus[pool]))
    scores, logits = {}, {}
    for v in variants:
        per = []
        for tr, te in inner_tasks(t, pool):
            r, lg, _ = score_task(t, tr, te, v, kinds=DRAWS, seeds=(0,))
            per.append(r)
            logits.setdefault(v["name"], []).append((lg, t.y[te]))
        cross = selection_score({k: np.mean([p[k] for p in per[:n_loco]]) for k in DRAWS})
        within = selection_score({k: np.mean([p[k] for p in per[n_loco:]]) for k in DRAWS})
        scores[v["name"]] = {**{k: float(np.mean([p[k] for p in per])) for k in DRAWS},
                             "cross_corpus": cross, "k_fold": within, "score": (cross + within) / 2}
    return scores, logits, n_loco


def nested(t: Table, scheme: str, variants=VARIANTS, out: Path | None = None, only: str | None = None) -> list[dict]:
    """For each outer fold: every variant scored on inner folds (no outer speaker), the best chosen, fitted on
    the outer training part and scored there; calibration fitted on the inner held-out corpora."""
    results = []
    for name, train, test in outer_folds(t, scheme):
        t0 = time.time()
        inner, inner_logits, n_loco = inner_screen(t, train, variants)
        best = max(variants, key=lambda v: inner[v["name"]]["score"])
        # calibration, on the inner held-out *corpora* only: which family (one temperature and bias for every
        # result, or one for clips read on their own and one for adapted clips) is chosen by leaving each
        # inner corpus out of the calibration fit in turn and scoring it; the chosen family is then fitted on
        # all of them
        cross = inner_logits[best["name"]][:n_loco]
        family = choose_calibration(cross)
        cal = fit_family(family, cross)
        res, logits, _ = score_task(t, train, test, best)
        # every variant on the outer fold too (reported, not chosen on)
        every = {}
        for v in variants:
            r, _, _ = score_task(t, train, test, v, kinds=("none", "10", "all", "skew10"), seeds=(0,))
            every[v["name"]] = r
        yt = t.y[test]
        other = "split" if family == "shared" else "shared"
        cal_other = fit_family(other, cross)
        row = {"scheme": scheme, "fold": name, "chosen": best["name"], "inner": inner, "outer": res,
               "every_variant_outer": every, "calibration_family": family, "calibration": cal,
               "temperature": cal["clip"][0], "bias": list(cal["clip"][1]),
               "ece": {k: ece(apply_family(cal, k, logits[k]), yt) for k in logits},
               f"ece_{other}": {k: ece(apply_family(cal_other, k, logits[k]), yt) for k in logits},
               "ece_uncalibrated": {k: ece(calibrated(logits[k], 1.0, np.zeros(logits[k].shape[1])), yt) for k in logits},
               "n_test": int(len(test)), "speakers": int(len(np.unique(t.speaker[test]))),
               "seconds": round(time.time() - t0, 1)}
        print(f"{scheme} {name}: chose {best['name']}; outer {json.dumps({k: round(v, 3) for k, v in res.items()})}; "
              f"ECE none {row['ece']['none']:.3f} all {row['ece']['all']:.3f} ({row['seconds']} s)", file=sys.stderr)
        results.append(row)
        if out is not None:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return results


def choose(t: Table, variants=VARIANTS) -> dict:
    """The shipped recipe's choice: the same inner procedure as every outer fold's (held-out corpora and speaker
    folds), run on all the speakers, as nested cross-validation does for its final model."""
    scores, tasks_logits, n_loco = inner_screen(t, np.arange(len(t.x)), variants)
    scores = {name: {k: round(float(v), 4) for k, v in sc.items()} for name, sc in scores.items()}
    for name, sc in scores.items():
        print(name, sc, file=sys.stderr)
    best = max(variants, key=lambda v: scores[v["name"]]["score"])
    family = choose_calibration(tasks_logits[best["name"]][:n_loco])
    return {"chosen": best["name"], "calibration_family": family, "scores": scores}


# the voice variants screened beside a layer choice (another encoder's, whose layers no earlier screen chose)
LAYER_SCREEN_VARIANTS = ("none", "two heads mean tau3", "two heads meanvar tau3", "mean tau3")


def layer_variants(table_layers: list[int], layer_sets: list[list[int]], width: int,
                   names=LAYER_SCREEN_VARIANTS) -> list[dict]:
    """Every voice variant of :data:`LAYER_SCREEN_VARIANTS` on each layer set: the nested screen then chooses
    the layers on inner folds as it chooses the normalisation (the table holds ``table_layers``' statistics)."""
    from training.probe import pool_columns

    out = []
    for ls in layer_sets:
        cols = pool_columns([table_layers.index(layer) for layer in ls], width)
        for v in VARIANTS:
            if v["name"] in names:
                out.append(dict(v, name=f"{v['name']} L{''.join(map(str, ls))}", cols=cols, layers=ls))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", action="append", default=None, metavar="KIND=PATH")
    ap.add_argument("--stats", default=".cache/voice/stats.npz", help="where the statistics table is cached")
    ap.add_argument("--scheme", choices=["loco", "kfold", "both"], default="both")
    ap.add_argument("--json", default=None, help="append each finished outer fold here")
    ap.add_argument("--without", action="append", default=[], help="leave a corpus out entirely (e.g. emovo)")
    ap.add_argument("--attach", default=None, metavar="CHECKPOINT",
                    help="write the nested figures of finished screens (--loco-json, --kfold-json) into a card")
    ap.add_argument("--choose", action="store_true",
                    help="run the inner screen on every speaker: the shipped recipe's voice variant and calibration")
    ap.add_argument("--loco-json", default=None)
    ap.add_argument("--kfold-json", default=None)
    ap.add_argument("--encoder", default="whisper-base", help="the encoder whose statistics are screened")
    ap.add_argument("--layer-sets", default=None, metavar="1,2,3;2,3,4",
                    help="screen these layer sets too, nested like the voice variants (default: states 2-4 only, "
                         "as the shipped recipe's earlier screen chose for whisper-base)")
    ap.add_argument("--voice-variants", default=",".join(LAYER_SCREEN_VARIANTS),
                    help="with --layer-sets: the voice variants screened on each layer set (comma-separated names)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = VARIANTS
    table_layers = LAYERS
    if args.layer_sets:
        from serdemo import encoders

        sets = [[int(v) for v in part.split(",")] for part in args.layer_sets.split(";")]
        table_layers = sorted({layer for s in sets for layer in s})
        variants = layer_variants(table_layers, sets, encoders.info(args.encoder).width,
                                  args.voice_variants.split(","))
        if args.stats == ap.get_default("stats"):
            args.stats = f".cache/voice/stats-{args.encoder}-L{''.join(map(str, table_layers))}.npz"
    t = stats_table(args.corpus or DEFAULT_CORPORA, out=Path(args.stats), encoder=args.encoder, layers=table_layers)
    if args.without:
        keep = ~np.isin(t.corpus, args.without)
        t = Table(t.x[keep], t.y[keep], t.speaker[keep], t.corpus[keep], t.classes)
    if args.choose:
        result = choose(t, variants)
        print(json.dumps(result))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
        return
    if args.attach:
        read = lambda p: [json.loads(line) for line in open(p)] if p else []
        attach(Path(args.attach), t, read(args.loco_json), read(args.kfold_json))
        return
    out = Path(args.json) if args.json else None
    for scheme in (["loco", "kfold"] if args.scheme == "both" else [args.scheme]):
        rows = nested(t, scheme, variants, out=out)
        keys = DRAWS
        print(f"\n{scheme}: " + " ".join(f"{k} {np.mean([r['outer'][k] for r in rows]):.3f}" for k in keys))



def outer_predictions(t: Table, rows: list[dict], scheme: str, seed: int = 0, variants=VARIANTS) -> dict:
    """Refit each outer fold's chosen variant (as its row in the screen's JSON-lines says) and return, per draw
    kind, the outer clips' labels, predictions, calibrated probabilities (the fold's own calibration) and
    corpora: the nested figures, clip by clip and adapted."""
    from training.calibration import scale

    by_name = {v["name"]: v for v in variants}
    folds = {name: (train, test) for name, train, test in outer_folds(t, scheme)}
    out: dict = {k: {"y": [], "pred": [], "prob": [], "corpus": []} for k in DRAWS}
    for row in rows:
        train, test = folds[row["fold"]]
        probe = fitted(t, train, by_name[row["chosen"]])
        chosen = by_name[row["chosen"]]
        clip = fitted(t, train, dict(VARIANTS[0], cols=chosen.get("cols"))) if chosen.get("clip_head") else probe
        for kind in DRAWS:
            lg = (clip if kind == "none" else probe).logits(t.x[test], draws(t, test, np.random.default_rng(1000 + seed), kind))
            out[kind]["y"].append(t.y[test])
            out[kind]["pred"].append(lg.argmax(1))
            t_, b_ = row["calibration"]["clip" if kind == "none" else "voice"]
            out[kind]["prob"].append(scale(lg, t_, b_))
            out[kind]["corpus"].append(t.corpus[test])
    return {k: {f: np.concatenate(v[f]) for f in v} for k, v in out.items()}


def nested_block(t: Table, rows: list[dict], scheme: str) -> dict:
    """A card's ``metrics.loco`` / ``metrics.cv`` block from the nested screen: ``pooled`` clip by clip (what
    the app's "what to expect" reads), ``adapted`` per draw, ECE per corpus, and each fold's choice."""
    from training.calibration import ece as ece10
    from training.metrics import scores_by_group

    preds = outer_predictions(t, rows, scheme)
    block = {"scheme": "leave-one-corpus-out, nested" if scheme == "loco" else "4-fold speaker-independent, nested",
             "split": "corpus" if scheme == "loco" else "speakers", "nested": True,
             "recipe": "training/configs/default.yaml (voice variant chosen per outer fold on its inner folds)",
             "note": "nested: each outer fold's recipe (voice normalisation) and calibration were chosen on inner "
                     "folds without its speakers (python -m training.voice); layers, frame normalisation and the "
                     "LDA's shrinkage were fixed by the earlier screens, which saw these speakers",
             "folds": [{"fold": r["fold"], "chosen": r["chosen"], "calibration": r["calibration_family"]}
                       for r in rows]}
    for kind, p in preds.items():
        scores = scores_by_group(p["y"], p["pred"], p["corpus"], list(t.classes))
        eces = {c: ece10(p["prob"][p["corpus"] == c], p["y"][p["corpus"] == c]) for c in np.unique(p["corpus"])}
        if kind == "none":
            block["pooled"], block["ece"] = scores, eces
        else:
            block.setdefault("adapted", {})[kind] = {"pooled": scores, "ece": eces}
    return block


def attach(checkpoint: Path, t: Table, loco_rows: list[dict], kfold_rows: list[dict]) -> None:
    """Write the nested figures into the checkpoint's card (``metrics.loco`` and ``metrics.cv``)."""
    from serdemo.checkpoint import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(checkpoint)
    metrics = card.setdefault("metrics", {})
    if loco_rows:
        metrics["loco"] = nested_block(t, loco_rows, "loco")
    if kfold_rows:
        metrics["cv"] = nested_block(t, kfold_rows, "kfold")
    save_checkpoint(checkpoint, model, card)


if __name__ == "__main__":
    main()
