"""Where a checkpoint's attention sits on held-out speech: the two figures issue 15 asks for.

    python benchmarks/attention.py [checkpoints/default] [--all-corpora]

Scores the checkpoint's own held-out test speakers (from its card) through the app's path and prints
the mean attention mass on speech frames and the mean mass on the last quarter of each clip's speech
(first to last speech frame); uniform attention over speech gives 1.0 and 0.25.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serdemo.checkpoint import read_card  # noqa: E402
from training.evaluate import evaluate_checkpoint  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args(argv)
    card = read_card(args.checkpoint)
    speakers = set(card["training"]["speakers"]["test"])
    specs = [f"{c}={Path(args.shared) / c}" for c in ("emodb", "ravdess", "nemo")]
    extras: dict = {}
    result = evaluate_checkpoint(args.checkpoint, specs, speakers, extras=extras)
    print(f"{Path(args.checkpoint).name}: {extras['n']} held-out clips of {len(speakers)} test speakers; "
          f"test UA {result['overall']['ua']:.3f}")
    print(f"attention mass on speech frames: mean {extras['attention_on_speech']:.3f} "
          f"(lowest clip {extras['attention_on_speech_min']:.3f}); target >= 0.85")
    print(f"attention mass on the last quarter of the speech: mean {extras['attention_last_quarter']:.3f}; "
          "target <= 0.40 (uniform: 0.25)")


if __name__ == "__main__":
    main()
