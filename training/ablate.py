"""``python -m training.ablate``: screen recipes cheaply on cached audio, both protocols, dev folds.

    python -m training.ablate reference                       # functionals + logistic regression
    python -m training.ablate neural --variant base --protocol kfold --folds 0
    python -m training.ablate table                           # what has been measured so far

Every clip of the three corpora (EMO-DB, RAVDESS, nEMO; ``ekman7``) is decoded once (the wave
cache), its speech mask and utterance functionals computed once (``.cache/ablate``). Protocols:
``kfold``: speaker-independent 4-fold CV over the pooled corpora (fold k tests, fold k+1 is dev);
``loco``: leave one corpus out (train on two, test on the third; dev = a quarter of the training
speakers). Recipes are chosen on the dev UA only; test figures are written beside them, never
used to choose. Each finished (variant, protocol, fold) appends one JSON line to
``.cache/ablate/results.jsonl``, so an interrupted screen resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from serdemo.features import FeatureConfig, LogMel, pad_batch
from serdemo.functionals import functionals
from serdemo.inference import model_inputs, run_model
from serdemo.labels import get_label_set
from serdemo.models import build_model
from serdemo.prosody import Prosody
from serdemo.vad import default_detector
from training import corpora as C
from training.data import WaveCache, build_examples, class_weights
from training.metrics import scores_by_group
from training.pretrained import init_pretrained
from training.splits import speaker_folds

log = logging.getLogger("training.ablate")
CORPORA = ["emodb=../shared/data/emodb", "ravdess=../shared/data/ravdess", "nemo=../shared/data/nemo"]
WORK = Path(".cache/ablate")
N_FOLDS = 4


@dataclass
class Variant:
    model: str = "localatt"
    hparams: dict = field(default_factory=lambda: {"stack": 8, "dropout": 0.3})
    norm: str = "global"
    speech_only: bool = True
    prosody: bool = False
    stats: bool = False
    ge2e: bool = False
    vtlp: tuple = (0.9, 1.1)  # () = off
    specaug: bool = True
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    corpus_balance: bool = False  # weight each corpus equally in the loss
    seed: int = 0


VARIANTS: dict[str, dict] = {
    "base": {},
    "stats": {"stats": True},
    "prosody": {"prosody": True},
    "prosody_stats": {"prosody": True, "stats": True},
    "utt_norm": {"norm": "utterance"},
    "no_vad": {"speech_only": False},
    "no_vtlp": {"vtlp": ()},
    "vtlp_wide": {"vtlp": (0.8, 1.2)},
    "no_specaug": {"specaug": False},
    "balance": {"corpus_balance": True},
    "wide": {"hparams": {"dense": 512}},
    "narrow": {"hparams": {"dense": 128}},
    "drop5": {"hparams": {"dropout": 0.5}},
    "stack8": {"hparams": {"stack": 8}},
    "long": {"epochs": 16},
    "ge2e": {"ge2e": True},
    "ge2e_stats": {"ge2e": True, "stats": True},
    "ge2e_nornn": {"ge2e": True, "hparams": {"stack": 4, "dropout": 0.3, "rnn": False}},
    "ge2e_nornn_stats": {"ge2e": True, "stats": True, "hparams": {"stack": 4, "dropout": 0.3, "rnn": False}},
    "cnnlstm": {"model": "cnnlstm", "hparams": {"channels": [8, 16, 24], "dropout": 0.3}},
}


def variant(name: str, **over) -> Variant:
    v = Variant()
    for k, val in {**VARIANTS.get(name.split("+")[0], {}), **over}.items():
        setattr(v, k, copy.deepcopy(val))
    for extra in name.split("+")[1:]:  # "ge2e_nornn+prosody" composes; hparams merge
        for k, val in VARIANTS[extra].items():
            setattr(v, k, {**v.hparams, **val} if k == "hparams" else copy.deepcopy(val))
    return v


# ---------------------------------------------------------------- data, computed once
class Data:
    def __init__(self, label_set: str = "ekman7"):
        self.label_set = get_label_set(label_set)
        utts = []
        for spec in CORPORA:
            kind, root = C.parse_spec(spec)
            utts += C.scan(kind, root).utterances
        self.examples, _ = build_examples(utts, self.label_set, ["gender"])
        self.cache = WaveCache(None, 16000, 20.0)
        t0 = time.time()
        self.cache.warm([e.utt.path for e in self.examples], 2)
        log.info("%d clips decoded in %.0f s", len(self.examples), time.time() - t0)
        self.features = FeatureConfig()
        self.frontend = LogMel(self.features)
        self.prosody = Prosody()
        WORK.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha1("|".join(e.utt.path for e in self.examples).encode()).hexdigest()[:10]
        self._speech_and_functionals(WORK / f"aux-{key}.npz")
        self.y = np.array([e.targets["emotion"] for e in self.examples])
        self.corpus = np.array([e.utt.corpus for e in self.examples])
        self.speaker = np.array([e.utt.speaker for e in self.examples])

    def wave(self, i: int) -> np.ndarray:
        return self.cache.get(self.examples[i].utt.path)

    @torch.inference_mode()
    def _speech_and_functionals(self, path: Path):
        if path.is_file():
            z = np.load(path, allow_pickle=False)
            n = z["n_frames"]
            flat = z["speech"]
            starts = np.concatenate([[0], np.cumsum(n)[:-1]])
            self.speech = [flat[s:s + k] for s, k in zip(starts, n)]
            self.func = z["functionals"]
            return
        det = default_detector()
        self.speech, funcs = [], []
        t0 = time.time()
        for i in range(0, len(self.examples), 32):
            waves = [self.wave(j) for j in range(i, min(i + 32, len(self.examples)))]
            x, lengths = pad_batch(waves)
            logmel, frames = self.frontend(x, lengths)
            masks = det.frame_masks(waves, frames.tolist())
            sp = torch.zeros(len(waves), logmel.shape[2], dtype=torch.bool)
            for k, m in enumerate(masks):
                sp[k, : len(m)] = torch.as_tensor(m)
            funcs.append(functionals(logmel, self.prosody(x)[..., : logmel.shape[2]], sp).numpy())
            self.speech += masks
        self.func = np.concatenate(funcs)
        np.savez(path, speech=np.concatenate(self.speech), n_frames=np.array([len(m) for m in self.speech]),
                 functionals=self.func)
        log.info("speech masks and functionals in %.0f s", time.time() - t0)

    def folds(self, protocol: str) -> list[dict]:
        """-> [{"name", "train", "dev", "test"}] index arrays."""
        idx = np.arange(len(self.examples))
        out = []
        if protocol == "kfold":
            folds = speaker_folds([e.utt for e in self.examples], N_FOLDS, 0)
            for k in range(N_FOLDS):
                test, dev = set(folds[k]), set(folds[(k + 1) % N_FOLDS])
                out.append({"name": f"kfold{k}", "test": idx[np.isin(self.speaker, list(test))],
                            "dev": idx[np.isin(self.speaker, list(dev))],
                            "train": idx[~np.isin(self.speaker, list(test | dev))]})
        elif protocol == "loco":
            for c in sorted(set(self.corpus)):
                rest = idx[self.corpus != c]
                dev_spk = speaker_folds([self.examples[i].utt for i in rest], N_FOLDS, 0)[0]
                dev = rest[np.isin(self.speaker[rest], dev_spk)]
                out.append({"name": f"loco-{c}", "test": idx[self.corpus == c], "dev": dev,
                            "train": np.setdiff1d(rest, dev)})
        else:
            raise SystemExit(f"unknown protocol {protocol!r}: kfold or loco")
        return out

    def scores(self, idx, pred) -> dict:
        s = scores_by_group(self.y[idx], pred, self.corpus[idx], list(self.label_set.classes))
        return {g: {m: round(v[m], 4) for m in ("ua", "wa", "macro_f1", "n")} for g, v in s.items()}


# ---------------------------------------------------------------- the reference row
def reference(data: Data, fold: dict, C_grid=(0.01, 0.1, 1.0)) -> dict:
    """Functionals + standardisation + class-balanced logistic regression; C chosen on dev UA."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data.func, data.y
    best = None
    for c in C_grid:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=3000))
        clf.fit(X[fold["train"]], y[fold["train"]])
        ua = balanced_accuracy_score(y[fold["dev"]], clf.predict(X[fold["dev"]]))
        if best is None or ua > best[0]:
            best = (ua, c, clf)
    ua, c, clf = best
    return {"dev_ua": round(ua, 4), "C": c, "test": data.scores(fold["test"], clf.predict(X[fold["test"]])),
            "test_proba": clf.predict_proba(X[fold["test"]]).round(5).tolist()}


# ---------------------------------------------------------------- a neural recipe, short schedule
def spec_mask(feats, frames, gen):
    """One frequency band (<= 8 rows) and one time span (<= 10 %) per example, filled with the
    mean over real frames."""
    b, rows, t = feats.shape
    fw = (torch.rand(b, generator=gen) * 9).long()
    f0 = (torch.rand(b, generator=gen) * (rows - fw)).long()
    tw = (torch.rand(b, generator=gen) * 0.1 * frames.float()).long()
    t0 = (torch.rand(b, generator=gen) * (frames - tw).clamp_min(1).float()).long()
    fi, ti = torch.arange(rows)[None], torch.arange(t)[None]
    fmask = (fi >= f0[:, None]) & (fi < (f0 + fw)[:, None])
    tmask = (ti >= t0[:, None]) & (ti < (t0 + tw)[:, None])
    real = (ti < frames[:, None]).float()
    mean = (feats * real[:, None]).sum((1, 2), keepdim=True) / (real.sum(1)[:, None, None] * rows)
    return torch.where(fmask[:, :, None] | tmask[:, None, :], mean, feats)


class _SpecAugModel(torch.nn.Module):
    """Wraps a model so SpecAugment runs on exactly what the model receives."""

    def __init__(self, model, gen):
        super().__init__()
        self.model, self.gen, self.on = model, gen, True

    def forward(self, feats, frames, speech=None):
        if self.on and self.training:
            feats = spec_mask(feats, frames, self.gen)
        return self.model(feats, frames, speech=speech)


def batch_inputs(data: Data, idx, n_frames_max=None):
    waves = [data.wave(i) for i in idx]
    x, lengths = pad_batch(waves)
    t = 1 + x.shape[1] // data.features.hop_length
    sp = torch.zeros(len(idx), t, dtype=torch.bool)
    for k, i in enumerate(idx):
        m = data.speech[i]
        sp[k, : len(m)] = torch.as_tensor(m)
    return x, lengths, sp


def neural(data: Data, fold: dict, v: Variant) -> dict:
    torch.manual_seed(v.seed)
    gen = torch.Generator().manual_seed(v.seed)
    feats_cfg = FeatureConfig(prosody=v.prosody, speech_only=v.speech_only, ge2e=v.ge2e)
    frontend = LogMel(feats_cfg)
    model = build_model(v.model, feats_cfg.input_rows, {"emotion": len(data.label_set)}, norm=v.norm,
                        input_frame_rate_hz=feats_cfg.frame_rate_hz, stats=v.stats, ge2e=v.ge2e, **v.hparams)
    init_pretrained(model)
    train = fold["train"]
    if v.norm == "global":
        with torch.no_grad():
            acc, sq, n = 0.0, 0.0, 0
            for i in range(0, len(train), 64):
                x, lengths, sp = batch_inputs(data, train[i:i + 64])
                inp = model_inputs(model, frontend, x, lengths, sp, prosody=data.prosody)
                f, fr = inp.feats, inp.frames
                m = (torch.arange(f.shape[2])[None] < fr[:, None]).float()[:, None]
                acc, sq, n = acc + (f * m).sum((0, 2)), sq + (f.square() * m).sum((0, 2)), n + m.sum()
            mean = acc / n
            model.norm.set_stats(mean, (sq / n - mean.square()).clamp_min(1e-6).sqrt())
    net = _SpecAugModel(model, gen)
    net.on = v.specaug
    y = torch.as_tensor(data.y)
    cw = class_weights([data.examples[i] for i in train], len(data.label_set))
    if v.corpus_balance:
        corp = data.corpus[train]
        share = {c: (corp == c).mean() for c in set(corp)}
        ex_w = torch.tensor([1.0 / (len(share) * share[data.corpus[i]]) for i in range(len(data.examples))])
    else:
        ex_w = torch.ones(len(data.examples))
    opt = torch.optim.AdamW(model.parameters(), lr=v.lr, weight_decay=1e-2)
    lengths_all = np.array([len(data.speech[i]) for i in range(len(data.examples))])
    steps_per_epoch = math.ceil(len(train) / v.batch_size)
    total = v.epochs * steps_per_epoch
    best, history, step = (-1.0, None, -1), [], 0
    t_start = time.time()
    for epoch in range(v.epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        # bucket by length within windows of 8 batches to cut padding, keep the shuffle
        w = v.batch_size * 8
        order = np.concatenate([sorted(order[i:i + w], key=lambda j: lengths_all[j]) for i in range(0, len(order), w)])
        batches = [order[i:i + v.batch_size] for i in range(0, len(order), v.batch_size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        losses = []
        for b in batches:
            lr = v.lr * 0.5 * (1 + math.cos(math.pi * step / total)) * min(1.0, (step + 1) / steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            x, lengths, sp = batch_inputs(data, b)
            alpha = None
            if v.vtlp:
                alpha = v.vtlp[0] + (v.vtlp[1] - v.vtlp[0]) * torch.rand(len(b), generator=gen)
            fwd = run_model(net, frontend, x, lengths, sp, alpha=alpha, prosody=data.prosody)
            loss = (F.cross_entropy(fwd.out.logits["emotion"], y[b], weight=cw, reduction="none") * ex_w[b]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss))
            step += 1
        dev_pred, _ = predict(data, model, frontend, fold["dev"])
        dev_ua = data.scores(fold["dev"], dev_pred)["overall"]["ua"]
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "dev_ua": dev_ua,
                        "s": round(time.time() - t_start)})
        log.info("%s epoch %d loss %.3f dev UA %.3f (%.0f s)", fold["name"], epoch + 1, np.mean(losses), dev_ua,
                 time.time() - t_start)
        if dev_ua > best[0]:
            best = (dev_ua, copy.deepcopy(model.state_dict()), epoch + 1)
    model.load_state_dict(best[1])
    pred, proba = predict(data, model, frontend, fold["test"])
    return {"dev_ua": best[0], "best_epoch": best[2], "history": history, "seconds": round(time.time() - t_start),
            "test": data.scores(fold["test"], pred), "test_proba": proba.round(5).tolist()}


@torch.no_grad()
def predict(data: Data, model, frontend, idx, batch_size: int = 64):
    model.eval()
    order = sorted(idx, key=lambda i: len(data.speech[i]))
    probs = {}
    for i in range(0, len(order), batch_size):
        b = order[i:i + batch_size]
        x, lengths, sp = batch_inputs(data, b)
        fwd = run_model(model, frontend, x, lengths, sp, prosody=data.prosody)
        p = torch.softmax(fwd.out.logits["emotion"].float(), -1).numpy()
        probs.update({j: p[k] for k, j in enumerate(b)})
    proba = np.stack([probs[i] for i in idx])
    return proba.argmax(1), proba


# ---------------------------------------------------------------- results file
def done(results: Path) -> set:
    if not results.is_file():
        return set()
    return {(r["variant"], r["fold"]) for r in map(json.loads, results.read_text().splitlines()) if r}


def append(results: Path, row: dict) -> None:
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def table(results: Path) -> str:
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    lines = [f"{'variant':<22} {'fold':<14} {'devUA':>6} {'testUA':>7}  per corpus test UA"]
    for name, rs in by.items():
        for r in sorted(rs, key=lambda r: r["fold"]):
            per = " ".join(f"{g}={s['ua']:.3f}" for g, s in r["test"].items() if g != "overall")
            lines.append(f"{name:<22} {r['fold']:<14} {r['dev_ua']:>6.3f} {r['test']['overall']['ua']:>7.3f}  {per}")
    return "\n".join(lines)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m training.ablate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["reference", "neural", "table"])
    ap.add_argument("--variant", action="append", default=[], help=f"one of {sorted(VARIANTS)}; a+b composes")
    ap.add_argument("--protocol", action="append", default=[], choices=["kfold", "loco"])
    ap.add_argument("--folds", default="all", help="comma-separated fold numbers within each protocol, or all")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(WORK / "results.jsonl"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    if args.what == "table":
        print(table(results))
        return
    torch.set_num_threads(2)
    data = Data()
    finished = done(results)
    for protocol in args.protocol or ["kfold", "loco"]:
        folds = data.folds(protocol)
        pick = range(len(folds)) if args.folds == "all" else [int(k) for k in args.folds.split(",")]
        for k in pick:
            fold = folds[k]
            names = ["reference"] if args.what == "reference" else args.variant or ["base"]
            for name in names:
                tag = name if args.what == "reference" else \
                    name + (f"@{args.epochs}ep" if args.epochs else "") + (f"#s{args.seed}" if args.seed else "")
                if (tag, fold["name"]) in finished:
                    continue
                if args.what == "reference":
                    r = reference(data, fold)
                else:
                    over = {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
                    r = neural(data, fold, variant(name, **over))
                row = {"variant": tag, "fold": fold["name"], "protocol": protocol, **r,
                       "test_index": fold["test"].tolist()}
                append(results, row)
                log.info("%s %s: dev UA %.3f, test UA %.3f", tag, fold["name"], r["dev_ua"], r["test"]["overall"]["ua"])


if __name__ == "__main__":
    main()
