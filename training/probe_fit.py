"""The closed-form fitter: models fitted in one solve on per-clip statistics (``closed_form = True`` on the
architecture, e.g. :class:`serdemo.models.probe.LinearProbe`), not by gradient steps.

A :class:`training.fit.Trainer` hands such a model to :class:`ClosedFormFitter`; it reads the cached encoder
states once, chooses the regularisation (a logistic regression's C or an LDA's shrinkage) on dev UA, fits
voice adaptation, the out-of-domain score and calibration as the recipe says, refits on train + dev where the
recipe asks, scores the test fold and writes the checkpoint. The arithmetic is :mod:`training.probe`'s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from serdemo.checkpoint import save_checkpoint
from serdemo.eta import PROBE_FIT_S  # the ETA table, shared with the app
from training.calibration import ece, rescore_test, scale
from training.metrics import scores_by_group
from training.probe import (
    REGULARISATION,
    corpus_calibration,
    default_grid,
    fit_voice_probe,
    voice_logits,
)
from training.splits import STORE_CORPUS



class ClosedFormFitter:
    """Fits ``trainer.model``'s kind of model in closed form, with the trainer's data, recipe and progress."""

    def __init__(self, trainer):
        self.t = trainer

    def grid(self) -> tuple[float, ...]:
        """The regularisation values tried on dev: the recipe's ``c_grid``, else its classifier's default."""
        hp = self.t.cfg.hparams
        return tuple(hp.get("c_grid") or default_grid(hp.get("classifier", "logistic")))

    def estimate_s(self, load_s: float, n: int) -> float:
        """Seconds after loading the states: one fit per value tried on dev, one more to refit on train + dev."""
        return load_s + PROBE_FIT_S * (len(self.grid()) + bool(self.t.cfg.hparams.get("refit"))) + 0.002 * n

    def fit(self) -> dict:
        """The linear probe: a linear classifier whose regularisation is chosen on dev UA; with ``voice`` in the
        recipe, trained on statistics relative to each training speaker's voice (:mod:`serdemo.voice`). With
        ``calibration: corpora`` the temperature and per-class biases are fitted on held-out corpora of the
        training data."""
        t = self.t
        out = Path(t.cfg.out)
        progress = t._live_progress()
        hp = t.cfg.hparams
        grid = self.grid()
        progress.epochs, progress.total_steps = 1, len(grid)
        progress.write("start", resumed=False, n_train=len(t.train), n_dev=len(t.dev), n_test=len(t.test),
                       world_size=1, store=t.data.store_report)
        t0 = time.time()
        layers, frame_norm = t.model.layers, t.model.frame_norm
        progress.phase("fitting the probe", PROBE_FIT_S * len(grid) + 5)
        x_tr = t.data.statistics(t.train, layers, frame_norm)
        x_dv = t.data.statistics(t.dev, layers, frame_norm) if t.dev else x_tr[:0]
        y_tr = np.array([e.targets["emotion"] for e in t.train])
        y_dv = np.array([e.targets["emotion"] for e in t.dev])
        # speakers for NAP's directions and voice adaptation: the store's clips have none ("")
        who = {part: (np.array(["" if e.utt.corpus == STORE_CORPUS else e.utt.speaker for e in exs]),
                      np.array([e.utt.corpus for e in exs])) for part, exs in (("train", t.train), ("dev", t.dev))}
        classes = list(t.label_set.classes)
        fit = lambda x, y, spk, corp, c, **dev: fit_voice_probe(
            x, y, spk, corp, len(classes), classes, t.model.n_layers, layers, frame_norm, hp, c, t.init_seed,
            encoder=t.encoder.info, **dev)
        t.model, c, dev_ua = fit(x_tr, y_tr, who["train"][0], who["train"][1], grid,
                                 x_dev=x_dv, y_dev=y_dv, speakers_dev=who["dev"][0])
        t.model = t.model.to(t.device)
        knob = REGULARISATION[hp.get("classifier", "logistic")]
        t.hparams = dict(t.hparams, **{knob: c})
        t.best_epoch = 0
        t.history = [{"epoch": 1, "dev_ua": round(dev_ua, 4), knob: c, "seconds": round(time.time() - t0, 1)}]
        metrics = {"dev": t.evaluate(t.dev), "best_epoch": 1}
        x_all, y_all = np.concatenate([x_tr, x_dv]), np.concatenate([y_tr, y_dv])
        spk_all, corp_all = (np.concatenate([who["train"][i], who["dev"][i]]) for i in (0, 1))
        if hp.get("calibration") == "corpora":
            progress.phase("calibrating on held-out corpora", PROBE_FIT_S * 4 + 5)
            t.calibration = corpus_calibration(
                lambda m: fit(x_all[m], y_all[m], spk_all[m], corp_all[m], c, with_ood=False)[0],
                x_all, y_all, spk_all, corp_all)
        else:
            t.calibration = t.calibrate()  # on dev, by the model that has not seen it
        if hp.get("refit") and t.dev:
            # the regularisation is chosen; the dev speakers now train too (more voices), the test speakers stay unseen
            progress.phase("refitting on train + dev speakers", PROBE_FIT_S + 5)
            t.model = fit(x_all, y_all, spk_all, corp_all, c)[0].to(t.device)
            metrics["refit"] = (f"after choosing {knob} on dev, refitted on the training and dev speakers together; "
                                "the dev figures are those of the model fitted on training alone")
        if t.calibration and t.test:  # the test ECE and bins: the shipped model's, at the fitted calibration
            x_te = t.data.statistics(t.test, layers, frame_norm)
            y_te = np.array([e.targets["emotion"] for e in t.test])
            note = ("the test ECE and bins are the shipped (refitted) model's, clip by clip" if hp.get("refit")
                    else "the test ECE and bins, clip by clip")
            t.calibration = rescore_test(t.calibration, voice_logits(t.model, x_te, None), y_te, note)
            if getattr(t.model, "adapts", False):
                spk_te = np.array([e.utt.speaker for e in t.test])
                z = voice_logits(t.model, x_te, spk_te)
                voice_cal = t.calibration.get("voice") or t.calibration
                t.calibration["ece_test_adapted"] = ece(scale(z, voice_cal["temperature"], voice_cal.get("bias")), y_te)
                metrics["test_adapted"] = scores_by_group(y_te, z.argmax(1), [e.utt.corpus for e in t.test], classes)
        save_checkpoint(out, t.model, t.card(metrics))
        progress.step = progress.total_steps
        progress.write("epoch", float("nan"), best_epoch=1, improved=True)
        result = t.finish(calibrate=False)
        progress.write("done", test_ua=result.get("test", {}).get("overall", {}).get("ua"))
        return result
