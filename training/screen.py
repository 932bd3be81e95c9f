"""Dev-only screening of recipe variants (``python -m training.evaluate --screen VARIANTS.yaml --config
RECIPE``): probe variants fitted on cached statistics, head variants trained by the one trainer, each scored on
k-fold dev folds and on every ordered corpus pair, never on the recipe's test fold."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from serdemo.labels import get_label_set
from serdemo.models import ARCHITECTURES
from training.splits import STORE_CORPUS

log = logging.getLogger("training.evaluate")


def screen(config_path: str, variants: list[dict], out_path: Path | None = None,
           workdir: Path | None = None) -> list[dict]:
    """Dev-only screening of variants on the recipe's corpora, with the one trainer.

    A probe variant: ``{"name", "layers", "C"}``, optionally ``"vtlp": [alphas]`` (training clips also
    seen warped with each alpha, encoder states cached per alpha), ``"frame_norm": true`` (each frame's
    state layer-normalised before the statistics) and the fit-time options of
    :func:`training.probe.fit_probe` (``"pool"``, ``"nap"``, ``"balance"``, ``"classifier"``; an
    ``"lda"`` variant names its ``"shrinkage"`` instead of ``"C"``). A head variant:
    ``{"name", "recipe", "model"}`` (the head's own recipe, e.g. ``training/configs/localatt.yaml``, and
    overrides of its fields), trained by :class:`training.fit.Trainer` on each task for a fixed
    number of epochs (no early stop) and scored by its last epoch's dev UA, so no epoch is chosen on the
    very dev speakers that score it.

    The recipe's test fold (``fold``, the shipped checkpoints' held-out speakers) is left out entirely:
    neither trained on nor scored. Two dev scores per variant, each a mean of dev UA:
    ``kfold``: every remaining fold as dev in turn, trained on the other remaining folds;
    ``cross_corpus``: every ordered pair of corpora, trained on one, scored on the other (what a corpus,
    a language and a recording set-up the model never heard does to it; the leave-one-corpus-out
    protocol's test corpus is never its own dev this way). ``score``, their mean, is what chooses.
    Each finished variant (and each finished task of a head variant) is appended to ``out_path`` (JSON
    lines) and read back, so an interrupted screen resumes. ``"tasks"`` (a list of task names, e.g.
    ``["kfold dev 1", "emodb -> ravdess"]``) runs a variant on those tasks only: a cheap first look at a
    costly idea, compared with other variants on the same tasks (the row names them; its means are
    over them, so it is not comparable with a full row's).
    """
    import itertools

    from training.config import FitConfig
    from training.data import Data
    from training.splits import speaker_folds

    cfg = FitConfig.from_yaml(config_path)
    aux = sorted({h for v in variants for h in aux_heads_of(v)} | set(cfg.aux_heads))
    data = Data(dataclasses.replace(cfg, fold=None, aux_heads=aux), get_label_set(cfg.label_set))
    examples = [e for e in data.train + data.dev + data.test if e.utt.corpus != STORE_CORPUS]
    folds = speaker_folds([e.utt for e in examples], cfg.n_folds, cfg.seed)
    held = set(folds[cfg.fold]) if cfg.fold is not None else set()
    examples = [e for e in examples if e.utt.speaker not in held]
    fold_of = {s: k for k, f in enumerate(folds) for s in f}
    fold = np.array([fold_of[e.utt.speaker] for e in examples])
    corpus = np.array([e.utt.corpus for e in examples])
    y = np.array([e.targets["emotion"] for e in examples])
    tasks = [(f"kfold dev {d}", (fold != d), fold == d) for d in sorted(set(fold.tolist()))]
    tasks += [(f"{a} -> {b}", corpus == a, corpus == b) for a, b in itertools.permutations(sorted(set(corpus)), 2)]
    tasks = [t for t in tasks if len(set(y[t[1]].tolist())) >= 2 and t[2].any()]  # something to learn and to score
    done, task_done = {}, {}
    if out_path is not None and Path(out_path).is_file():
        for r in (json.loads(line) for line in Path(out_path).read_text().splitlines() if line.strip()):
            if "task" in r:
                task_done[(r["name"], r["task"])] = r["ua"]
            else:
                done[r["name"]] = r

    def record(row: dict) -> None:
        if out_path is not None:
            with open(out_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    probe = ProbeTasks(data, examples, cfg.seed)
    results = []
    known = [t[0] for t in tasks]
    for v in variants:
        unknown = sorted(set(v.get("tasks") or []) - set(known))
        if unknown:
            raise ValueError(f"screen variant {v['name']!r}: unknown tasks {unknown}; the tasks are {known}")
    for v in variants:
        if v["name"] in done:
            results.append(done[v["name"]])
            continue
        dev = {}
        for name, tr, dv in (t for t in tasks if not v.get("tasks") or t[0] in v["tasks"]):
            if (v["name"], name) in task_done:
                dev[name] = task_done[(v["name"], name)]
                continue
            if getattr(ARCHITECTURES.get(v.get("model", "probe")), "closed_form", False):  # fitted on statistics
                ua = probe.dev_ua(v, tr, dv)
            else:
                ua = head_dev_ua(cfg, v, data.parts([examples[i] for i in np.flatnonzero(tr)],
                                                     [examples[i] for i in np.flatnonzero(dv)],
                                                     aux_heads_of(v)), workdir, name)
                record({"name": v["name"], "task": name, "ua": round(float(ua), 4)})
            dev[name] = round(float(ua), 4)
            log.info("%s, %s: dev UA %.3f", v["name"], name, ua)
        kf = [u for k, u in dev.items() if k.startswith("kfold")]
        xc = [u for k, u in dev.items() if "->" in k]
        kf, xc = (round(float(np.mean(u)), 4) if u else None for u in (kf, xc))
        score = round((kf + xc) / 2, 4) if kf is not None and xc is not None else None
        r = {**v, "kfold": kf, "cross_corpus": xc, "score": score, "dev": dev, "held_out_fold": cfg.fold}
        log.info("%s: k-fold dev %s, cross-corpus dev %s, score %s%s", v["name"], kf, xc, score,
                 f" (on {len(dev)} of {len(tasks)} tasks)" if v.get("tasks") else "")
        record(r)
        results.append(r)
    return results


class ProbeTasks:
    """Screening's probe fits: every state's mean + std per VTLP alpha (and per frame normalisation)
    computed once, then one classifier per task on the variant's columns."""

    def __init__(self, data, examples, seed: int):
        self.data, self.examples, self.seed = data, examples, seed
        self.corpus = np.array([e.utt.corpus for e in examples])
        self.speaker = np.array([e.utt.speaker for e in examples])
        self.y = np.array([e.targets["emotion"] for e in examples])
        self.stats: dict[tuple[float, bool], np.ndarray] = {}

    def dev_ua(self, v: dict, tr: np.ndarray, dv: np.ndarray) -> float:
        from training.probe import (
            REGULARISATION,
            fit_options,
            fit_probe,
            pool_columns,
            statistics,
        )

        alphas = [1.0] + [float(a) for a in v.get("vtlp", [])]  # training copies warped with these alphas
        norm = bool(v.get("frame_norm"))
        for a in alphas:
            if (a, norm) not in self.stats:
                depth = self.data.encoded_cache.frontend.encoder.info.n_layers
                self.stats[a, norm] = statistics(self.data.encoded(self.examples, a), list(range(depth + 1)), norm)
        width = self.data.encoded_cache.frontend.encoder.info.width
        cols = pool_columns(v["layers"], width)  # the variant's layers among every state's statistics
        x_tr = np.concatenate([self.stats[a, norm][tr][:, cols] for a in alphas])  # dev is never warped
        n = len(alphas)
        knob = v[REGULARISATION[v.get("classifier", "logistic")]]
        *_, ua = fit_probe(x_tr, np.tile(self.y[tr], n), self.stats[1.0, norm][dv][:, cols], self.y[dv],
                           len(self.data.label_set), c_grid=(knob,), seed=self.seed, **fit_options(v),
                           speakers=np.tile(self.speaker[tr], n), corpora=np.tile(self.corpus[tr], n), width=width)
        return float(ua)  # dev UA, scored by the probe's own fit


def aux_heads_of(v: dict) -> list[str]:
    """The auxiliary heads a screen variant trains: its own list, else its recipe's, else none."""
    if "aux_heads" in v:
        return list(v["aux_heads"])
    if v.get("recipe"):
        from training.config import FitConfig

        return list(FitConfig.from_yaml(v["recipe"]).aux_heads)
    return []


SCREEN_DATA = ("corpora", "label_set", "n_folds", "seed", "split")  # the screen's tasks: a head variant keeps them


HEAD_RESERVED = ("patience", "fold", "init", "out", "name") + SCREEN_DATA  # set by the screen, never by a variant


def head_dev_ua(cfg, v: dict, data, workdir: Path | None, task: str) -> float:
    """Train the head variant on the task's training part for its full schedule; its last epoch's dev UA.

    ``v["recipe"]``: the head's own recipe (e.g. ``training/configs/localatt.yaml``), so the head trains as it
    ships; other keys override recipe fields. The data, folds and seed stay the screen's."""
    from training.config import FitConfig
    from training.fit import Trainer

    base = FitConfig.from_yaml(v["recipe"]) if v.get("recipe") else cfg
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    overrides = {k: val for k, val in v.items() if k not in ("name", "note", "recipe", "tasks")}
    wrong = sorted(set(overrides) - fields)
    fixed = sorted(set(overrides) & set(HEAD_RESERVED))
    if wrong or fixed:
        raise ValueError(f"screen variant {v['name']!r}: " + "; ".join(
            ([f"not a recipe field: {', '.join(wrong)}"] if wrong else [])
            + ([f"set by the screen, not by a variant: {', '.join(fixed)}"] if fixed else [])))
    epochs = int(overrides.get("epochs", base.epochs))
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="serdemo-screen-"))
    slug = "".join(ch if ch.isalnum() else "-" for ch in f"{v['name']}-{task}")
    run = dataclasses.replace(base, **overrides, **{k: getattr(cfg, k) for k in SCREEN_DATA},
                              patience=epochs + 1, fold=None, init="", out=str(root / slug), name=slug)
    trainer = Trainer(run, data=data)
    trainer.fit()
    return float(trainer.history[-1]["dev_ua"])
