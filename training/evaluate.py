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

import torch

from serdemo.checkpoint import read_card, save_checkpoint, load_checkpoint
from serdemo.features import pad_batch
from serdemo.inference import Predictor
from serdemo.labels import get_label_set
from training import corpora as C
from training.data import WaveCache
from training.metrics import confusion_text, scores_by_group, table

log = logging.getLogger("training.evaluate")


def evaluate_checkpoint(path, specs: list[str], speakers: set[str] | None = None, batch_size: int = 16) -> dict:
    pred = Predictor.from_checkpoint(path)
    card = pred.card
    label_set = get_label_set(card["label_set"]["name"]) if isinstance(card.get("label_set"), dict) else None
    classes = card["heads"]["emotion"]
    cache = WaveCache(sample_rate=pred.features.sample_rate)
    y, p, groups = [], [], []
    for spec in specs:
        kind, root = C.parse_spec(spec)
        utts = C.scan(kind, root).utterances
        if speakers is not None:
            utts = [u for u in utts if u.speaker in speakers]
        keep = []
        for u in utts:
            target = label_set.map(u.emotion) if label_set else (u.emotion if u.emotion in classes else None)
            if target is not None:
                keep.append((u, classes.index(target)))
        for i in range(0, len(keep), batch_size):
            chunk = keep[i:i + batch_size]
            waves = [cache.get(u.path) for u, _ in chunk]
            x, lengths = pad_batch(waves)
            with torch.inference_mode():
                feats, frames = pred.frontend(x.to(pred.device), lengths.to(pred.device))
                out = pred.model(feats, frames)
            p += out.logits["emotion"].argmax(-1).cpu().tolist()
            y += [t for _, t in chunk]
            groups += [u.corpus for u, _ in chunk]
    if not y:
        raise SystemExit("no utterances to evaluate (check --data and the speakers filter)")
    return scores_by_group(y, p, groups, classes)


def reuse_problem(card: dict, trainer) -> str | None:
    """Why a finished fold checkpoint cannot stand for ``trainer``'s fold (None: it can).

    The checkpoint must have a test result, the same split settings (scheme, fold count, fold, seed),
    the same training file list (hash) and the same train/dev/test speakers.
    """
    if "test" not in card.get("metrics", {}):
        return "it has no test result"
    training, cfg = card.get("training", {}), trainer.cfg
    old = training.get("config", {})
    for key in ("split", "n_folds", "fold", "seed", "label_set"):
        if old.get(key) != getattr(cfg, key):
            return f"its {key} is {old.get(key)!r}, this run's is {getattr(cfg, key)!r}"
    if training.get("file_list_sha256") != trainer.file_list_sha256:
        return "it was trained on a different file list"
    speakers = training.get("speakers", {})
    for name, part in (("train", trainer.train), ("dev", trainer.dev), ("test", trainer.test)):
        if speakers.get(name) != sorted({e.utt.speaker for e in part}):
            return f"its {name} speakers differ"
    return None


def cross_validate(config_path: str, n_folds: int, workdir: Path, epochs: int | None = None) -> dict:
    from training.config import FitConfig
    from training.fit import Trainer

    base = dataclasses.replace(FitConfig.from_yaml(config_path), n_folds=n_folds)
    if epochs:
        base = dataclasses.replace(base, epochs=epochs)
    y, p, groups, folds = [], [], [], []
    for k in range(n_folds):
        cfg = dataclasses.replace(base, fold=k, out=str(workdir / f"fold{k}"), name=f"{base.name}-fold{k}")
        trainer = Trainer(cfg)
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
        preds = trainer.predict(trainer.test)
        y += [e.targets["emotion"] for e in trainer.test]
        p += preds.tolist()
        groups += [e.utt.corpus for e in trainer.test]
        folds.append({"fold": k, "test_speakers": metrics.get("test_speakers"),
                      "test": {g: {m: s[m] for m in ("ua", "wa", "macro_f1", "n")} for g, s in metrics["test"].items()},
                      "best_epoch": metrics.get("best_epoch")})
        log.info("fold %d done", k)
    classes = list(get_label_set(base.label_set).classes)
    pooled = scores_by_group(y, p, groups, classes)
    return {"scheme": f"{n_folds}-fold speaker-independent ({base.split})", "recipe": config_path,
            "pooled": pooled, "folds": folds}


def attach(checkpoint: Path, cv: dict) -> None:
    model, card = load_checkpoint(checkpoint)
    card.setdefault("metrics", {})["cv"] = cv
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
    ap.add_argument("--workdir", help="where fold checkpoints go (default: a temporary folder)")
    ap.add_argument("--attach", help="write the cross-validation result into this checkpoint's card")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)

    if args.folds:
        if not args.config:
            ap.error("--folds needs --config RECIPE")
        work = Path(args.workdir or tempfile.mkdtemp(prefix="serdemo-cv-"))
        result = cross_validate(args.config, args.folds, work, args.epochs)
        print(table(result["pooled"], f"{result['scheme']}: pooled test predictions"))
        print(confusion_text(result["pooled"]["overall"]))
        if args.attach:
            attach(Path(args.attach), result)
    else:
        if not args.checkpoint or not args.data:
            ap.error("give CHECKPOINT and at least one --data KIND=PATH (or --folds N --config RECIPE)")
        speakers = None
        if args.speakers_from_card:
            card = read_card(args.speakers_card or args.checkpoint)
            speakers = set(card.get("training", {}).get("speakers", {}).get(args.speakers_from_card, []))
            if not speakers:
                raise SystemExit(f"the card lists no {args.speakers_from_card} speakers")
        result = evaluate_checkpoint(args.checkpoint, args.data, speakers)
        print(table(result, f"{args.checkpoint}"))
        print(confusion_text(result["overall"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
