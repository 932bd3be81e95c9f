"""``python -m training.ensemble``: merge members of one recipe into one ensemble checkpoint.

    python -m training.fit --config training/configs/default.yaml --model-seed 1 --out runs/s1   # etc.
    python -m training.ensemble --out checkpoints/default runs/s0 runs/s1 runs/s2

The members must be the same recipe on the same split (architecture, settings, features, heads,
label set, training file list and speakers); they differ only in ``model_seed``. The merged model
(:class:`serdemo.models.ensemble.Ensemble`) shares the frozen front end and averages the members'
probabilities. Its dev and test figures are scored again on the members' dev and test speakers, and
the card lists each member's own figures beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from serdemo.checkpoint import load_checkpoint, save_checkpoint
from serdemo.models.ensemble import Ensemble
from training.metrics import table

log = logging.getLogger("training.ensemble")

SAME = ("features", "heads", "label_set")


def _recipe(config: dict) -> dict:
    """A card's training config with every setting filled in (older cards lack newer settings, which
    then had their defaults), less what may differ between members."""
    from training.config import FitConfig

    full = FitConfig.from_card(config).to_dict()
    return {k: v for k, v in full.items() if k not in ("model_seed", "out", "name")}


def _mismatch(a: dict, b: dict) -> str | None:
    for key in SAME:
        if a.get(key) != b.get(key):
            return f"their {key} differ"
    if a["model"] != b["model"]:
        return "their architectures or settings differ"
    ta, tb = a.get("training", {}), b.get("training", {})
    if ta.get("file_list_sha256") != tb.get("file_list_sha256"):
        return "they were trained on different files"
    if ta.get("speakers") != tb.get("speakers"):
        return "their train/dev/test speakers differ"
    ca, cb = (_recipe(t.get("config", {})) for t in (ta, tb))
    if ca != cb:
        diff = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        return f"their recipes differ in {', '.join(diff)}"
    return None


def merge(members: list[Path], out: Path, name: str | None = None) -> dict:
    """Merge member checkpoints into ``out``; -> the ensemble's metrics."""
    from training.config import FitConfig
    from training.fit import Trainer

    if len(members) < 2:
        raise SystemExit("an ensemble needs at least two members")
    resolved = [Path(m).resolve() for m in members]
    if len(set(resolved)) < len(resolved):
        raise SystemExit("the same checkpoint is listed twice; an ensemble needs distinct members")
    loaded = [load_checkpoint(m) for m in members]
    cards = [c for _, c in loaded]
    for path, card in zip(members[1:], cards[1:]):
        problem = _mismatch(cards[0], card)
        if problem:
            raise SystemExit(f"{path} cannot join {members[0]}: {problem}")
    seeds = [c["training"]["config"].get("model_seed") for c in cards]
    seeds = [c["training"]["config"].get("seed") if s is None else s for s, c in zip(seeds, cards)]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"members share a model seed ({seeds}); they would be the same model")
    first = cards[0]
    member_hparams = dict(first["model"]["hparams"])
    ge2e = bool(member_hparams.pop("ge2e", False))
    arch = first["model"]["architecture"]
    cfg = dataclasses.replace(FitConfig.from_card(first["training"]["config"]), out=str(out), model_seed=None,
                              name=name or first["training"]["config"].get("name", "ensemble"))
    # a trainer for the data and the scoring path; norm 'none' skips recomputing statistics the
    # members already carry
    trainer = Trainer(dataclasses.replace(cfg, norm="none"))
    trainer.cfg = cfg
    # the data on disk must still be what the members trained on, or the card would describe other data
    problem = trainer.data_mismatch(first["training"])
    if problem:
        raise SystemExit(f"the corpora on disk are not what {members[0]} trained on ({problem}); "
                         "cannot rescore the members")
    ens = Ensemble(trainer.features.input_rows, {h: len(v) for h, v in first["heads"].items()}, members=len(loaded),
                   member=arch, ge2e=ge2e, input_frame_rate_hz=trainer.features.frame_rate_hz, **member_hparams)
    for target, (model, _) in zip(ens.members, loaded):
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("ge2e.")}
        target.load_state_dict(state)
    if ge2e:
        ens.ge2e.load_state_dict(loaded[0][0].ge2e.state_dict())
    trainer.model = trainer.net = ens.eval()
    trainer.hparams = {"members": len(loaded), "member": arch, "ge2e": ge2e, **member_hparams}
    metrics = {"dev": trainer.evaluate(trainer.dev)}
    if trainer.test:
        metrics["test"] = trainer.evaluate(trainer.test)
        metrics["test_speakers"] = sorted({e.utt.speaker for e in trainer.test})
        log.info("\n%s", table(metrics["test"], f"ensemble of {len(loaded)}, test fold {cfg.fold}"))
    card = trainer.card(metrics)
    card["training"]["ensemble"] = [
        {"checkpoint": Path(m).name, "model_seed": c["training"]["config"].get("model_seed"),
         "best_epoch": c["metrics"].get("best_epoch"),
         "dev_ua": c["metrics"].get("dev", {}).get("overall", {}).get("ua"),
         "test_ua": c["metrics"].get("test", {}).get("overall", {}).get("ua"),
         "history": c["training"].get("history")}
        for m, c in zip(members, cards)]
    save_checkpoint(out, ens, card)
    return metrics


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members", nargs="+", help="member checkpoint folders (same recipe, different --model-seed)")
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--name", help="name in the card (default: the recipe's)")
    args = ap.parse_args(argv)
    return merge([Path(m) for m in args.members], Path(args.out), args.name)


if __name__ == "__main__":
    main()
