"""A :class:`training.fit.Trainer`'s checkpoints: the card it writes, starting from another checkpoint
(``--init``), ``OUT/last`` for ``--resume`` (weights, optimiser, counters, every rank's RNG), and the final
card with the test fold's scores."""

from __future__ import annotations

import logging
from pathlib import Path

from serdemo.checkpoint import (
    CheckpointError,
    encoder_block,
    load_checkpoint,
    make_card,
    save_checkpoint,
)
from serdemo.labels import AUX_HEADS
from training import corpora as C
from training import state as S
from training.metrics import table

log = logging.getLogger("training.fit")
TUNED_PREFIXES = ("tuned.", "tuned_post.")  # the model's own copies of encoder blocks (tune_layers)


class Checkpointing:
    """Mixed into :class:`training.fit.Trainer` (reads its model, recipe, data, history and optimiser)."""

    def card(self, metrics: dict) -> dict:
        cfg = self.cfg
        heads = {h: list(self.label_set.classes) if h == "emotion" else list(AUX_HEADS[h]) for h in self.heads}
        speakers = {name: sorted({e.utt.speaker for e in part})
                    for name, part in (("train", self.train), ("dev", self.dev), ("test", self.test))}
        extra = {"encoder": encoder_block(self.encoder)} if self.encoder is not None else {}
        if getattr(self, "calibration", None):
            extra["calibration"] = self.calibration
        return make_card(
            self.model, self.features, heads, self.hparams, **extra,
            name=cfg.name, label_set=self.label_set.to_dict(),
            training={
                "config": cfg.to_dict(),
                "corpora": self.corpus_reports,
                "dropped_labels": self.dropped,
                "untrained_heads": self.untrained_heads,
                "seed": cfg.seed,
                "world_size": self.world,
                "file_list_sha256": self.file_list_sha256,
                "n_train": len(self.train), "n_dev": len(self.dev), "n_test": len(self.test),
                "speakers": speakers,
                "history": self.history,
            },
            metrics=metrics,
            license=C.licence_for(sorted({e.utt.corpus for e in self.train})),
        )

    def _init_from(self, path: str) -> None:
        """Fine-tune: copy every tensor of the checkpoint; a checkpoint of another architecture, other
        heads or other sizes is refused (it would silently train from scratch)."""
        try:
            source, card = load_checkpoint(path, "cpu")
        except CheckpointError as exc:
            raise SystemExit(f"--init: {exc}") from None
        own = self.model.state_dict()
        theirs = source.state_dict()
        if card["model"]["architecture"] != self.cfg.model:
            raise SystemExit(f"--init: {path} is a {card['model']['architecture']} model, this run trains "
                             f"{self.cfg.model}; fine-tune with the checkpoint's own recipe")
        # a frozen checkpoint may start a run that fine-tunes encoder blocks (train the head, then tune): the
        # copies it lacks start from the pretrained encoder; any other missing, extra or resized tensor refuses
        fresh = sorted(k for k in own if k not in theirs and k.startswith(TUNED_PREFIXES))
        bad = sorted(k for k in own if k not in fresh and (k not in theirs or theirs[k].shape != own[k].shape))
        bad += sorted(k for k in theirs if k not in own)
        if bad:
            raise SystemExit(f"--init: {len(bad)} tensors of {path} and this model do not fit each other "
                             f"(e.g. {bad[0]}); fine-tune with the checkpoint's own recipe and heads")
        self.model.load_state_dict(theirs, strict=not fresh)
        if self.is_main:
            log.info("initialised %d of %d tensors from %s%s", len(own) - len(fresh), len(own), path,
                     f"; the {len(fresh)} of the tuned encoder blocks start from the pretrained encoder" if fresh else "")

    def rng_state(self) -> tuple[dict, dict]:
        tensors, js = S.capture_global_rng(self.device)
        aug_t, aug_js = self.aug.state()
        return {**tensors, **aug_t}, {**js, "augment": aug_js}

    def save_last(self, epoch: int, metrics: dict) -> None:
        """``OUT/last``: weights, card, optimiser and counters (main rank), each rank's RNG state."""
        last = Path(self.cfg.out) / "last"
        if self.is_main:
            save_checkpoint(last, self.model, self.card(metrics))
            S.save_trainer_state(last, self.opt, {"epoch": epoch, "best_ua": self.best_ua, "best_epoch": self.best_epoch,
                                                  "bad_epochs": self.bad_epochs, "history": self.history,
                                                  "world_size": self.world})
        S.save_rng(last, self.rank, *self.rng_state())

    def resume(self) -> None:
        last = Path(self.cfg.out) / "last"
        if not (last / S.TRAINER).is_file():
            raise SystemExit(f"--resume: no {last}/{S.TRAINER} to resume from")
        model, _ = load_checkpoint(last, self.device)
        self.model.load_state_dict(model.state_dict())
        meta = S.load_trainer_state(last, self.opt)
        for g in self.opt.param_groups[1:]:  # the tuned encoder blocks: this run's rate, not the saved one
            g["scale"] = self.cfg.encoder_lr
        self.start_epoch = meta["epoch"] + 1
        self.best_ua, self.best_epoch, self.bad_epochs = meta["best_ua"], meta["best_epoch"], meta["bad_epochs"]
        self.history = meta["history"]
        saved = S.load_rng(last, self.rank)
        if saved is None or meta.get("world_size", 1) != self.world:
            log.warning("rank %d: no RNG state for %d rank(s) in %s; the run continues, but not as it would have",
                        self.rank, self.world, last)
        else:
            tensors, js = saved
            S.restore_global_rng(tensors, js, self.device)
            self.aug.load_state(tensors, js["augment"])
        self.resumed = True
        if self.is_main:
            log.info("resumed from %s at epoch %d (best dev UA %.3f)", last, self.start_epoch + 1, self.best_ua)

    def finish(self, calibrate: bool = True) -> dict:
        """Main rank: reload the best epoch, score the test fold, write the final card."""
        model, card = load_checkpoint(self.cfg.out, self.device)
        self.model.load_state_dict(model.state_dict())
        metrics = card["metrics"]
        if self.test:
            metrics["test"] = self.evaluate(self.test)
            metrics["test_speakers"] = sorted({e.utt.speaker for e in self.test})
            log.info("\n%s", table(metrics["test"], f"test fold {self.cfg.fold} (speakers never seen in training)"))
            if len(self.heads) > 1:
                metrics["test_aux"] = self.evaluate_aux(self.test)
        if calibrate:
            self.calibration = self.calibrate()
        save_checkpoint(self.cfg.out, self.model, self.card(metrics))
        return metrics
