"""``python -m training.evaluate``: WA, UA, macro-F1 and confusion matrices, per corpus and overall.

    python -m training.evaluate checkpoints/default --data emodb=../shared/data/emodb \
        --data ravdess=../shared/data/ravdess --speakers-from-card test
    python -m training.evaluate --folds 4 --config training/configs/default.yaml --attach checkpoints/default

The first form scores a checkpoint on corpora (``--speakers-from-card test`` keeps only the
speakers the card lists as held out, so no training speaker is scored). The second runs
speaker-independent cross-validation with a recipe: every fold's test speakers are never seen in
that fold's training, predictions are pooled so each speaker is scored exactly once, and
``--attach`` writes the result into a checkpoint's card. A fold whose checkpoint in ``--workdir`` is
already finished is reused, so an interrupted run resumes where it stopped; a checkpoint whose split
settings, file list or speakers differ from the fold's is retrained instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from serdemo import encoders
from serdemo.checkpoint import load_checkpoint, read_card, save_checkpoint
from serdemo.features import pad_batch
from serdemo.inference import Predictor, attention_figures
from serdemo.labels import get_label_set
from serdemo.models import encoder_layers, uses_encoder
from training import corpora as C
from training.data import WaveCache
from training.metrics import confusion_text, scores_by_group, table
from training.screen import screen
from training.splits import STORE_CORPUS

log = logging.getLogger("training.evaluate")


def evaluate_checkpoint(path, specs: list[str], speakers: set[str] | None = None, batch_size: int = 16,
                        extras: dict | None = None) -> dict:
    """Score a checkpoint on corpora: models on the encoder read the encoder-state cache (filled by the
    Predictor's own front end, so a second scoring encodes nothing), log-mel models run the app's own
    :meth:`Predictor.predict_batch`.

    ``extras`` (a dict, filled in): ``attention_on_speech``, the mean over clips of the attention
    mass on frames the speech detector marked as speech, ``attention_on_speech_min``, and
    ``attention_last_quarter``, the mean mass on the last quarter of each clip's speech.
    """
    pred = Predictor.from_checkpoint(path, device="cpu")
    card = pred.card
    label_set = get_label_set(card["label_set"]["name"]) if isinstance(card.get("label_set"), dict) else None
    classes = card["heads"]["emotion"]
    cache = WaveCache(sample_rate=pred.features.sample_rate)
    keep = []
    for spec in specs:
        kind, root = C.parse_spec(spec)
        utts = C.scan(kind, root).utterances
        if speakers is not None:
            utts = [u for u in utts if u.speaker in speakers]
        for u in utts:
            target = label_set.map(u.emotion) if label_set else (u.emotion if u.emotion in classes else None)
            if target is not None:
                keep.append((u, classes.index(target)))
    if not keep:
        raise SystemExit("no utterances to evaluate (check --data and the speakers filter)")
    keep.sort(key=lambda ut: len(cache.get(ut[0].path, keep=False)))  # similar lengths batch together
    y = [t for _, t in keep]
    groups = [u.corpus for u, _ in keep]
    if uses_encoder(pred.model):
        probs, on_speech, last_quarter = _score_cached(pred.model, cache, [u.path for u, _ in keep], batch_size,
                                                       encoders.name_of(pred.card))
        p = probs.argmax(1).tolist()
    else:
        p, on_speech, last_quarter = [], [], []
        for i in range(0, len(keep), batch_size):
            chunk = keep[i:i + batch_size]
            results = pred.predict_batch([cache.get(u.path, keep=False) for u, _ in chunk],
                                         speech=[cache.speech(u.path) for u, _ in chunk])
            p += [classes.index(r.label()) for r in results]
            on_speech += [r.attention_on_speech() for r in results]
            last_quarter += [r.attention_in_last_quarter() for r in results]
    if extras is not None:
        extras["attention_on_speech"] = round(float(np.nanmean(on_speech)), 4)
        extras["attention_on_speech_min"] = round(float(np.nanmin(on_speech)), 4)
        extras["attention_last_quarter"] = round(float(np.nanmean(last_quarter)), 4)
        extras["n"] = len(on_speech)
    return scores_by_group(y, p, groups, classes)


@torch.inference_mode()
def _score_cached(model, waves: WaveCache, paths: list[str], batch_size: int = 32,
                  encoder_name: str = encoders.DEFAULT):
    """Emotion probabilities and attention figures of a model on the encoder, from cached states, a batch at a
    time (no clip's wave or states is held past its batch).
    -> (probs (n, classes), attention mass on speech per clip, mass on the last quarter of the speech)."""
    from training.batches import collate_states
    from training.encoded import EncodedCache, wave_digest

    cache = EncodedCache(encoder=encoder_name)
    n_states = encoder_layers(model) + 1
    probs, on_speech, last_quarter = [], [], []
    for i in range(0, len(paths), batch_size):
        part = paths[i:i + batch_size]
        clips = [waves.get(p, keep=False) for p in part]
        items = cache.items([wave_digest(w) for w in clips], clips.__getitem__, lambda j: waves.speech(part[j]),
                            keep=False)
        x, lengths, sp = collate_states(items, n_states, "cpu")
        out = model(x, lengths, speech=sp)
        probs.append(torch.softmax(out.logits["emotion"].float(), -1).numpy())
        for j in range(x.shape[0]):
            n = int(lengths[j])
            on, last = attention_figures(out.attention[j, :n].numpy(), np.arange(n) + 0.5, sp[j, :n].numpy())
            on_speech.append(on)
            last_quarter.append(last)
    return np.concatenate(probs), on_speech, last_quarter


# ---------------------------------------------------------------- the classic reference row
class Functionals:
    """Utterance functionals (:func:`serdemo.functionals.functionals`) of cached clips, over speech."""

    def __init__(self, cache: WaveCache, features=None):
        from serdemo.features import FeatureConfig, LogMel
        from serdemo.prosody import Prosody

        self.cache = cache
        cfg = features or FeatureConfig()
        self.frontend, self.prosody, self.hop = LogMel(cfg), Prosody(cfg.sample_rate, cfg.hop_length), cfg.hop_length
        self.memory: dict[str, np.ndarray] = {}

    @torch.inference_mode()
    def __call__(self, paths: list[str]) -> np.ndarray:
        from serdemo.functionals import functionals

        todo = [p for p in dict.fromkeys(paths) if p not in self.memory]
        todo.sort(key=lambda p: len(self.cache.get(p)))
        for i in range(0, len(todo), 32):
            chunk = todo[i:i + 32]
            x, lengths = pad_batch([self.cache.get(p) for p in chunk])
            logmel, frames = self.frontend(x, lengths)
            speech = self.cache.speech_batch(chunk, logmel.shape[2], self.hop)
            real = torch.arange(logmel.shape[2])[None] < frames[:, None]
            f = functionals(logmel, self.prosody(x)[..., : logmel.shape[2]], speech & real)
            self.memory.update(zip(chunk, f.numpy()))
        return np.stack([self.memory[p] for p in paths])


def reference_predictions(func: Functionals, train, dev, test, c_grid=(0.01, 0.1, 1.0),
                          probs: dict | None = None, n_classes: int | None = None) -> tuple[np.ndarray, dict]:
    """The reference row: standardised functionals, class-balanced logistic regression (scikit-learn),
    C chosen on the dev speakers' UA. -> (test predictions, {"C", "dev_ua"}).

    ``probs`` (a dict, filled in): the chosen classifier's class probabilities on ``dev`` and ``test``
    (columns in label order even when a class is missing from training).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = {name: func([e.utt.path for e in part]) for name, part in (("train", train), ("dev", dev), ("test", test))}
    ys = {name: np.array([e.targets["emotion"] for e in part]) for name, part in
          (("train", train), ("dev", dev), ("test", test))}
    best = None
    for c in c_grid:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=3000))
        clf.fit(xs["train"], ys["train"])
        ua = balanced_accuracy_score(ys["dev"], clf.predict(xs["dev"])) if len(dev) else 0.0
        if best is None or ua > best[0]:
            best = (ua, c, clf)
    clf = best[2]
    if probs is not None:
        n_classes = n_classes or int(max(ys[k].max() for k in ys if len(ys[k]))) + 1
        for name in ("dev", "test"):
            full = np.zeros((len(xs[name]), n_classes), dtype=np.float32)
            if len(xs[name]):
                full[:, clf.classes_] = clf.predict_proba(xs[name])
            probs[name] = full
    return clf.predict(xs["test"]), {"C": best[1], "dev_ua": round(float(best[0]), 4)}


PROBE_LAYERS = (0, 1, 2, 3, 4, 5, 6)  # the reference probe reads every layer (the measurement)


def probe_predictions(data, train, dev, test, layers=PROBE_LAYERS) -> tuple[np.ndarray, dict, dict]:
    """The strong reference row: the linear probe on the encoder (per-layer mean + std over speech,
    logistic regression, C on dev UA), fitted on the fold's training speakers.
    -> (test predictions, {"C", "dev_ua", "layers"}, {"dev": probs, "test": probs})."""
    from training.probe import fit_probe, statistics

    layers = list(layers)
    width = data.encoded_cache.frontend.encoder.info.width
    xs = {name: statistics(data.encoded(part), layers) if part else np.zeros((0, len(layers) * 2 * width), np.float32)
          for name, part in (("train", train), ("dev", dev), ("test", test))}
    ys = {name: np.array([e.targets["emotion"] for e in part], dtype=int)
          for name, part in (("train", train), ("dev", dev), ("test", test))}
    n_classes = len(data.label_set)
    clf, mean, std, c, dev_ua = fit_probe(xs["train"], ys["train"], xs["dev"], ys["dev"], n_classes)
    probs = {}
    for name in ("dev", "test"):
        full = np.zeros((len(xs[name]), n_classes), dtype=np.float32)
        if len(xs[name]):
            full[:, clf.classes_] = clf.predict_proba((xs[name] - mean) / std)
        probs[name] = full
    return probs["test"].argmax(1), {"C": c, "dev_ua": round(float(dev_ua), 4), "layers": layers}, probs


def reuse_problem(card: dict, trainer) -> str | None:
    """Why a finished fold checkpoint cannot stand for ``trainer``'s fold (None: it can).

    The checkpoint must have a test result, the same recipe (every setting but where it is written and how
    the run was executed: an architecture's weights keep their names and shapes across many recipe changes,
    e.g. the probe's ``frame_norm`` or its classifier, so a stale fold would load without an error), the same
    training file list (hash) and the same train/dev/test speakers.
    """
    from training.config import ConfigError, FitConfig

    if "test" not in card.get("metrics", {}):
        return "it has no test result"
    training, cfg = card.get("training", {}), trainer.cfg
    try:
        old = FitConfig.from_card(training.get("config", {}))
    except (ConfigError, TypeError, ValueError) as exc:
        return f"its config is not readable ({exc})"
    for f in dataclasses.fields(cfg):  # split, folds, seeds and the whole recipe (the corpora: by the file list below)
        if f.name not in RUN_SETTINGS and getattr(old, f.name) != getattr(cfg, f.name):
            return f"its {f.name} is {getattr(old, f.name)!r}, this run's is {getattr(cfg, f.name)!r}"
    return trainer.data_mismatch(training)


# Settings that say where a run writes and how it executes, not what it trains: a fold may differ in them
RUN_SETTINGS = ("name", "out", "corpora", "workers", "cache_dir", "trace")


def cross_validate(config_path: str, n_folds: int, workdir: Path, epochs: int | None = None,
                   split: str | None = None, reference: bool = True) -> dict:
    """Train the recipe once per fold and pool the test predictions (every held-out speaker scored once).

    ``split``: ``speakers`` (k-fold over the pooled corpora) or ``corpus`` (leave one corpus out:
    one fold per corpus). With ``reference`` the functionals + logistic-regression row is fitted on
    the same training speakers and scored on the same test speakers.
    """
    from training.config import FitConfig
    from training.fit import Trainer

    base = dataclasses.replace(FitConfig.from_yaml(config_path), n_folds=n_folds)
    if split:
        base = dataclasses.replace(base, split=split)
    if epochs:
        base = dataclasses.replace(base, epochs=epochs)
    y, p, p_ref, p_probe, groups, folds = [], [], [], [], [], []
    func = None
    k, n = 0, n_folds
    while k < n:
        cfg = dataclasses.replace(base, fold=k, out=str(workdir / f"{base.split}-fold{k}"), name=f"{base.name}-fold{k}")
        trainer = Trainer(cfg)
        data = trainer.data
        if base.split == "corpus":
            # one fold per corpus; the app's store only ever trains, so it is never held out
            n = len({e.utt.corpus for e in trainer.train + trainer.dev + trainer.test} - {STORE_CORPUS})
        done = Path(cfg.out) / "card.json"
        problem = reuse_problem(read_card(cfg.out), trainer) if done.is_file() else "there is none"
        if problem is None:
            # a finished fold (an earlier, interrupted run, or the shipped fold-0 model): reuse it
            model, card = load_checkpoint(cfg.out)
            trainer.model.load_state_dict(model.state_dict())
            metrics = card["metrics"]
            log.info("fold %d: reusing the finished checkpoint in %s", k, cfg.out)
        else:
            if done.is_file():
                log.info("fold %d: retraining, the checkpoint in %s does not match: %s", k, cfg.out, problem)
            metrics = trainer.fit()
        test_probs = trainer.probabilities(trainer.test)
        preds = test_probs.argmax(1)
        fold = {"fold": k, "test_speakers": metrics.get("test_speakers"),
                "test": {g: {m: s[m] for m in ("ua", "wa", "macro_f1", "n")} for g, s in metrics["test"].items()},
                "best_epoch": metrics.get("best_epoch")}
        y += [e.targets["emotion"] for e in trainer.test]
        p += preds.tolist()
        groups += [e.utt.corpus for e in trainer.test]
        if reference:
            func = func or Functionals(trainer.cache, trainer.features)
            ref, info = reference_predictions(func, trainer.train, trainer.dev, trainer.test,
                                              n_classes=len(trainer.label_set))
            p_ref += ref.tolist()
            ref_scores = scores_by_group([e.targets["emotion"] for e in trainer.test], ref,
                                         [e.utt.corpus for e in trainer.test], list(trainer.label_set.classes))
            fold["reference"] = {**info, "test": {g: {m: s[m] for m in ("ua", "wa", "macro_f1", "n")}
                                                  for g, s in ref_scores.items()}}
            probe, probe_info, _ = probe_predictions(data, trainer.train, trainer.dev, trainer.test)
            p_probe += probe.tolist()
            probe_scores = scores_by_group([e.targets["emotion"] for e in trainer.test], probe,
                                           [e.utt.corpus for e in trainer.test], list(trainer.label_set.classes))
            fold["probe"] = {**probe_info, "test": {g: {m: s[m] for m in ("ua", "wa", "macro_f1", "n")}
                                                    for g, s in probe_scores.items()}}
            # the selection score (a refitted probe has trained on dev since: never re-score dev with it)
            fold["dev"] = {"ua": round(float(metrics["dev"]["overall"]["ua"]), 4)} if metrics.get("dev") else {}
        folds.append(fold)
        log.info("fold %d done", k)
        k += 1
    classes = list(get_label_set(base.label_set).classes)
    scheme = (f"{n_folds}-fold speaker-independent" if base.split == "speakers"
              else "leave-one-corpus-out" if base.split == "corpus" else base.split)
    out = {"scheme": scheme, "split": base.split, "recipe": config_path,
           "pooled": scores_by_group(y, p, groups, classes), "folds": folds,
           "fold_spread": fold_spread(folds, "test")}
    if reference:
        out["probe"] = {"name": "encoder probe: per-layer mean + std, logistic regression",
                        "pooled": scores_by_group(y, p_probe, groups, classes),
                        "fold_spread": fold_spread([f["probe"] for f in folds], "test")}
        out["reference"] = {"name": "classic: log-mel + prosody functionals, logistic regression",
                            "pooled": scores_by_group(y, p_ref, groups, classes),
                            "fold_spread": fold_spread([f["reference"] for f in folds], "test")}
    return out


def fold_spread(folds: list[dict], key: str) -> dict:
    """Mean and standard deviation over folds of UA, WA and macro-F1, overall and per corpus."""
    groups = sorted({g for f in folds for g in f[key]})
    out = {}
    for g in groups:
        vals = [f[key][g] for f in folds if g in f[key]]
        out[g] = {m: {"mean": round(float(np.mean([v[m] for v in vals])), 4),
                      "std": round(float(np.std([v[m] for v in vals])), 4)} for m in ("ua", "wa", "macro_f1")}
    return out


def side_by_side(result: dict) -> str:
    """Model and reference, per corpus: pooled UA / WA / F1 and the fold mean ± std of UA."""
    lines = [f"{result['scheme']} ({result['recipe']}): pooled test predictions, UA mean ± std over folds",
             f"{'set':<10} {'model UA':>9} {'WA':>6} {'F1':>6} {'UA folds':>14}   {'reference UA':>12} {'WA':>6} "
             f"{'F1':>6} {'UA folds':>14}"]
    ref = result.get("reference")
    for g, s in result["pooled"].items():
        sp = result["fold_spread"].get(g, {}).get("ua", {"mean": float("nan"), "std": float("nan")})
        row = f"{g:<10} {s['ua']:>9.3f} {s['wa']:>6.3f} {s['macro_f1']:>6.3f} {sp['mean']:>7.3f} ± {sp['std']:.3f}"
        if ref:
            r = ref["pooled"][g]
            rs = ref["fold_spread"].get(g, {}).get("ua", {"mean": float("nan"), "std": float("nan")})
            row += f"   {r['ua']:>12.3f} {r['wa']:>6.3f} {r['macro_f1']:>6.3f} {rs['mean']:>7.3f} ± {rs['std']:.3f}"
        lines.append(row)
    probe = result.get("probe")
    if probe:
        lines.append(f"{probe['name']}:")
        for g, s in probe["pooled"].items():
            sp = probe["fold_spread"].get(g, {}).get("ua", {"mean": float("nan"), "std": float("nan")})
            lines.append(f"{g:<10} {s['ua']:>9.3f} {s['wa']:>6.3f} {s['macro_f1']:>6.3f} "
                         f"{sp['mean']:>7.3f} ± {sp['std']:.3f}")
    return "\n".join(lines)


def attach(checkpoint: Path, cv: dict) -> None:
    """Write a cross-validation result into the card: ``metrics.cv`` (k-fold) or ``metrics.loco``."""
    model, card = load_checkpoint(checkpoint)
    card.setdefault("metrics", {})["loco" if cv.get("split") == "corpus" else "cv"] = cv
    save_checkpoint(checkpoint, model, card)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--data", action="append", default=[], metavar="KIND=PATH")
    ap.add_argument("--speakers-from-card", choices=["test", "dev"],
                    help="score only the speakers the card lists under training.speakers.<set>")
    ap.add_argument("--speakers-card", help="take the speakers from this checkpoint's card instead (compare two "
                    "checkpoints on the same held-out speakers)")
    ap.add_argument("--folds", type=int, help="cross-validate the recipe given with --config")
    ap.add_argument("--config")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (cross-validation)")
    ap.add_argument("--protocol", choices=["kfold", "loco", "both"], default="both",
                    help="k-fold over the pooled corpora, leave-one-corpus-out, or both (default)")
    ap.add_argument("--no-reference", action="store_true", help="skip the functionals + LR reference row")
    ap.add_argument("--workdir", help="where fold checkpoints go (default: a temporary folder)")
    ap.add_argument("--attach", help="write the cross-validation result into this checkpoint's card")
    ap.add_argument("--json", help="also write the result to this file")
    ap.add_argument("--screen", metavar="VARIANTS.yaml",
                    help="screen variants (probe options, heads) on dev only, with --config RECIPE; results go to "
                    "--json as JSON lines; head variants' runs go to --workdir")
    args = ap.parse_args(argv)

    if args.screen:
        import yaml

        if not args.config:
            ap.error("--screen needs --config RECIPE")
        rows = screen(args.config, yaml.safe_load(Path(args.screen).read_text()), Path(args.json) if args.json else None,
                      Path(args.workdir) if args.workdir else None)
        width = max([28] + [len(r["name"]) for r in rows])
        print(f"{'variant':<{width}} {'k-fold dev':>10} {'cross-corpus dev':>17} {'score':>6}")
        shown = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731  (a variant on some tasks has no mean)
        for r in sorted(rows, key=lambda r: -1 if r["score"] is None else -r["score"]):
            print(f"{r['name']:<{width}} {shown(r['kfold']):>10} {shown(r['cross_corpus']):>17} {shown(r['score']):>6}")
            if r.get("tasks"):  # a cheap first look: each of its tasks, to set beside other variants' same tasks
                print("    " + "; ".join(f"{t} {u:.3f}" for t, u in r["dev"].items()))
        return {"screen": rows}

    if args.folds:
        if not args.config:
            ap.error("--folds needs --config RECIPE")
        work = Path(args.workdir or tempfile.mkdtemp(prefix="serdemo-cv-"))
        result = {}
        for proto in (["kfold", "loco"] if args.protocol == "both" else [args.protocol]):
            r = cross_validate(args.config, args.folds, work, args.epochs, "speakers" if proto == "kfold" else "corpus",
                               reference=not args.no_reference)
            print(side_by_side(r))
            print(confusion_text(r["pooled"]["overall"]))
            if args.attach:
                attach(Path(args.attach), r)
            result[proto] = r
    else:
        if not args.checkpoint or not args.data:
            ap.error("give CHECKPOINT and at least one --data KIND=PATH (or --folds N --config RECIPE)")
        speakers = None
        if args.speakers_from_card:
            card = read_card(args.speakers_card or args.checkpoint)
            speakers = set(card.get("training", {}).get("speakers", {}).get(args.speakers_from_card, []))
            if not speakers:
                raise SystemExit(f"the card lists no {args.speakers_from_card} speakers")
        extras: dict = {}
        result = evaluate_checkpoint(args.checkpoint, args.data, speakers, extras=extras)
        print(table(result, f"{args.checkpoint}"))
        print(confusion_text(result["overall"]))
        print(f"attention mass on speech frames: mean {extras['attention_on_speech']:.3f}, "
              f"lowest clip {extras['attention_on_speech_min']:.3f}; on the last quarter of the speech: mean "
              f"{extras['attention_last_quarter']:.3f} ({extras['n']} clips)")
        result = {**result, "attention": extras}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
