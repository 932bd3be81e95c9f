"""bfloat16 against float32 for the encoder on the CPU: label agreement and state similarity.

    python benchmarks/precision.py [checkpoints/default] [--n 300]

Runs the checkpoint on its own dev speakers' clips (from its card) twice through the Predictor, once
with the encoder in float32 and once in bfloat16 (autocast; what the app uses where the CPU has native
bf16), and prints how often the emotion label agrees, the largest probability difference, and the
cosine similarity of the last encoder layer's states.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serdemo.checkpoint import read_card  # noqa: E402
from serdemo.features import pad_batch  # noqa: E402
from serdemo.inference import Predictor  # noqa: E402
from training import corpora as C  # noqa: E402
from training.data import WaveCache  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--n", type=int, default=300, help="dev clips to compare")
    ap.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args(argv)
    card = read_card(args.checkpoint)
    dev = set(card["training"]["speakers"]["dev"])
    utts = [u for c in ("emodb", "ravdess", "nemo") for u in C.scan(c, Path(args.shared) / c).utterances
            if u.speaker in dev]
    rng = np.random.default_rng(0)
    utts = [utts[i] for i in sorted(rng.choice(len(utts), min(args.n, len(utts)), replace=False))]
    cache = WaveCache()
    pred = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    waves = [cache.get(u.path) for u in utts]
    speech = [cache.speech(u.path) for u in utts]
    out = {}
    for bf16 in (False, True):
        pred.frontend.bf16 = bf16
        labels, probs, cos = [], [], []
        for i in range(0, len(waves), 16):
            res = pred.predict_batch(waves[i:i + 16], speech=speech[i:i + 16])
            labels += [r.label() for r in res]
            probs += [np.array(list(r.probabilities["emotion"].values())) for r in res]
        out[bf16] = (labels, np.stack(probs))
    with torch.inference_mode():
        for w in waves[:50]:
            x, n = pad_batch([w])
            pred.frontend.bf16 = False
            a = pred.frontend(x, n).states[0, -1]
            pred.frontend.bf16 = True
            b = pred.frontend(x, n).states[0, -1]
            cos.append(float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)))
    agree = np.mean([a == b for a, b in zip(out[False][0], out[True][0])])
    print(f"{Path(args.checkpoint).name}: {len(waves)} dev clips; bf16 vs float32 labels agree on {agree:.1%}; "
          f"largest probability difference {np.abs(out[False][1] - out[True][1]).max():.3f}; "
          f"cosine of the last layer's states (50 clips): mean {np.mean(cos):.4f}, lowest {np.min(cos):.4f}")


if __name__ == "__main__":
    main()
