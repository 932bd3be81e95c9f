"""``python -m training.encode --corpus KIND=PATH ... [--encoder NAME] [--alpha A]``: fill the encoder-state cache.

Encodes every clip of the corpora not yet in :class:`training.encoded.EncodedCache` (resumable: each finished
clip is a file; a killed run redoes only what is missing).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from serdemo import encoders
from training.data import WaveCache, load_corpora
from training.encoded import EncodedCache


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.encode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", action="append", required=True, metavar="KIND=PATH")
    ap.add_argument("--alpha", type=float, action="append", default=None, help="VTLP alphas to cache (default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder", default=encoders.DEFAULT, choices=sorted(encoders.REGISTRY))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    utts, _ = load_corpora(args.corpus)
    waves_cache = WaveCache()
    waves = [waves_cache.get(u.path) for u in utts]
    speech = [waves_cache.speech(u.path) for u in utts]
    cache = EncodedCache(encoder=args.encoder)
    t0 = time.time()
    for alpha in args.alpha or [1.0]:
        cache.fill(waves, speech, alpha, progress=lambda d, n: print(f"\ralpha {alpha}: {d}/{n} "
                                                                     f"({time.time() - t0:.0f} s)", end="",
                                                                     file=sys.stderr))
        print(file=sys.stderr)
    print(f"{len(utts)} clips cached in {cache.directory} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
