"""``python -m training.calibrate CHECKPOINT``: calibrate an already trained checkpoint on its own dev speakers.

A command module: the arithmetic is :mod:`training.calibration`'s, the data and the model the trainer's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile

from serdemo.checkpoint import load_checkpoint, save_checkpoint
from training.config import FitConfig
from training.fit import Trainer


def main(argv=None) -> dict:
    """``python -m training.calibrate CHECKPOINT``: fit the temperature of an already trained checkpoint
    on its own dev speakers (from its card's recipe) and write the ``calibration`` block into its card
    (with its auxiliary heads' test scores, ``metrics.test_aux``, where it has such heads)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m training.calibrate", description=main.__doc__)
    ap.add_argument("checkpoint")
    args = ap.parse_args(argv)
    model, card = load_checkpoint(args.checkpoint)
    cfg = dataclasses.replace(FitConfig.from_card(card["training"]["config"]), out=tempfile.mkdtemp())
    trainer = Trainer(cfg, data=None)
    problem = trainer.data_mismatch(card["training"])
    if problem:
        raise SystemExit(f"{args.checkpoint}: cannot calibrate on its dev speakers: {problem}")
    trainer.model.load_state_dict(model.state_dict())
    trainer.model.eval()
    card["calibration"] = trainer.calibrate()
    if len(trainer.heads) > 1 and trainer.test:  # auxiliary heads (gender...) on the same test speakers
        card.setdefault("metrics", {})["test_aux"] = trainer.evaluate_aux(trainer.test)
    save_checkpoint(args.checkpoint, model, card)
    return card["calibration"]


if __name__ == "__main__":
    main()
