"""Every registered encoder's own cost: the encoder pass alone (log-mel in, states out) on a 4-s clip, at the
depth the shipped probe on it runs, fp32 and bf16, one thread and all. End-to-end figures (decode, speech
detection, model) are ``python -m serdemo.bench --only probe``.

    .venv/bin/python benchmarks/encoders.py [--repeats 20] [--layers base=4,tiny=4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serdemo import encoders  # noqa: E402
from serdemo.features import LogMel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--layers", type=int, default=4, help="blocks run (the shipped probe runs 4 of base's 6)")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    n = int(args.seconds * 16000)
    wave = torch.randn(1, n, generator=g) * 0.05
    all_threads = torch.get_num_threads()
    print(f"{args.seconds:.0f}-s clip, encoder pass only, {args.layers} blocks, median of {args.repeats} (ms)")
    print(f"{'encoder':<18} {'width':>5} {'fp32 1thr':>10} {'bf16 1thr':>10} {'fp32 all':>9} {'bf16 all':>9}")
    for name in encoders.REGISTRY:
        enc = encoders.load(name)
        logmel, frames = LogMel(enc.info.features)(wave, torch.tensor([n]))
        layers = min(args.layers, enc.info.n_layers)
        cells = []
        for threads in (1, all_threads):
            torch.set_num_threads(threads)
            for bf16 in (False, True):
                times = []
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    enc(logmel, frames, layers)
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        enc(logmel, frames, layers)
                        times.append((time.perf_counter() - t0) * 1000)
                cells.append(statistics.median(times))
        print(f"{name:<18} {enc.info.width:>5} {cells[0]:>10.1f} {cells[1]:>10.1f} {cells[2]:>9.1f} {cells[3]:>9.1f}")


if __name__ == "__main__":
    main()
