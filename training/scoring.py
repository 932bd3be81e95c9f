"""What a :class:`training.fit.Trainer` says about its model on held-out clips: predictions, logits as served
(what calibration is fitted on), UA/WA per corpus, the auxiliary heads, and the temperature on dev."""

from __future__ import annotations

import logging

import numpy as np
import torch

from serdemo.labels import AUX_HEADS
from serdemo.models import uses_encoder
from serdemo.vtlp import sample_alpha
from training import data as D
from training.metrics import scores_by_group

log = logging.getLogger("training.fit")
EVAL_SEED = 12345  # alphas of warped evaluation (vtlp_dev): the same every epoch


class Scoring:
    """Mixed into :class:`training.fit.Trainer` (reads its model, data, recipe and ``inputs``)."""

    @torch.no_grad()
    def predict(self, examples, warp: bool = False, batch_size: int = 32) -> np.ndarray:
        """-> predicted emotion indices, in the order of ``examples``; ``warp``: VTLP with fixed alphas."""
        return self.probabilities(examples, warp, batch_size).argmax(1)

    @torch.no_grad()
    def probabilities(self, examples, warp: bool = False, batch_size: int = 32) -> np.ndarray:
        """-> ``(len(examples), classes)`` emotion probabilities, in the order of ``examples``."""
        return torch.softmax(torch.as_tensor(self.logits(examples, warp, batch_size)), -1).numpy().astype(np.float32)

    @torch.no_grad()
    def logits(self, examples, warp: bool = False, batch_size: int = 32) -> np.ndarray:
        """-> ``(len(examples), classes)`` emotion logits (float64), in the order of ``examples``: what
        calibration is fitted on, exactly as the Predictor divides them."""
        self.model.eval()
        keep = self.closed_form is None  # a closed-form model's clips are read once, never held
        order = sorted(range(len(examples)), key=lambda i: len(self.data.cache.get(examples[i].utt.path, keep=keep)))
        preds = np.zeros((len(examples), len(self.label_set)), dtype=np.float64)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            exs = [examples[j] for j in idx]
            alpha = sample_alpha(len(exs), self.cfg.vtlp_low, self.cfg.vtlp_high, gen) \
                if warp and not uses_encoder(self.model) else None
            x, lens, speech = self.inputs(exs, alpha)
            with self.autocast():
                out = self.model(x, lens, speech=speech)
            preds[idx] = out.logits["emotion"].double().cpu().numpy()
        return preds

    @torch.no_grad()
    def evaluate_aux(self, examples) -> dict:
        """Each auxiliary head's UA / WA on the ``examples`` that carry its label (e.g. gender)."""
        from training.metrics import scores

        self.model.eval()
        out: dict = {}
        for head in self.heads[1:]:
            exs = [e for e in examples if e.targets.get(head, D.IGNORE) != D.IGNORE]
            if not exs:
                continue
            preds = []
            for i in range(0, len(exs), 32):
                x, lens, speech = self.inputs(exs[i:i + 32])
                preds += self.model(x, lens, speech=speech).logits[head].argmax(1).tolist()
            s = scores([e.targets[head] for e in exs], preds, list(AUX_HEADS[head]))
            out[head] = {k: s[k] for k in ("ua", "wa", "n", "confusion")}
        return out

    def evaluate(self, examples, warp: bool = False) -> dict:
        if not examples:
            return {}
        preds = self.predict(examples, warp)
        y = [e.targets["emotion"] for e in examples]
        return scores_by_group(y, preds, [e.utt.corpus for e in examples], list(self.label_set.classes))

    def calibrate(self) -> dict | None:
        """Temperature scaling of the emotion head on the dev speakers (the card's ``calibration``)."""
        from training.calibration import calibrate

        if not self.dev:
            return None
        y = lambda part: np.array([e.targets["emotion"] for e in part])
        log_p = self.logits  # the logits as served, unclipped (the temperature divides exactly these)
        out = calibrate(log_p(self.dev), y(self.dev), log_p(self.test) if self.test else None,
                        y(self.test) if self.test else None)
        log.info("calibration: T %.2f, dev ECE %.3f -> %.3f", out["temperature"], out["ece_dev_before"],
                 out["ece_dev_after"])
        return out
