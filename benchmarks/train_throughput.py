"""Training throughput in clips per second on real clips: with and without the decoded-audio cache,
with and without VTLP on the spectrogram.

    .venv/bin/python benchmarks/train_throughput.py [--arch cnnlstm] [--clips 96] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serdemo.features import FeatureConfig, LogMel, pad_batch  # noqa: E402
from serdemo.models import build_model  # noqa: E402
from serdemo.vtlp import sample_alpha, warp_power  # noqa: E402
from training.corpora import scan_ravdess  # noqa: E402
from training.data import WaveCache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/ravdess")
    ap.add_argument("--arch", default="cnnlstm")
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    utts = scan_ravdess(args.data).utterances[: args.clips]
    fc = FeatureConfig()
    fe = LogMel(fc)
    model = build_model(args.arch, fc.n_mels, {"emotion": 7}, input_frame_rate_hz=fc.frame_rate_hz, norm="global")
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def epoch(cache: WaveCache, vtlp: bool) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(utts), args.batch):
            chunk = utts[i:i + args.batch]
            x, lengths = pad_batch([cache.get(u.path) for u in chunk])
            power = fe.power(x)
            if vtlp:
                power = warp_power(power, sample_alpha(len(chunk)), fc.sample_rate)
            out = model(fe.mel(power), fe.frame_lengths(lengths))
            loss = torch.nn.functional.cross_entropy(out.logits["emotion"], torch.zeros(len(chunk), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return len(utts) / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        cold = WaveCache(Path(tmp) / "cold")
        t0 = time.perf_counter()
        for u in utts:
            cold.get(u.path)
        decode_rate = len(utts) / (time.perf_counter() - t0)
        print(f"{len(utts)} RAVDESS clips, batch {args.batch}, {args.arch}, {torch.get_num_threads()} threads")
        print(f"decode + resample only (first epoch, no cache): {decode_rate:8.1f} clips/s")
        rows = []
        for vtlp in (False, True):
            first = epoch(WaveCache(Path(tmp) / f"fresh{vtlp}"), vtlp)  # decodes every clip
            cached = epoch(cold, vtlp)  # memory cache: no decoding
            rows.append((vtlp, first, cached))
        print(f"{'VTLP':<6} {'no cache clips/s':>17} {'cached clips/s':>15}")
        for vtlp, first, cached in rows:
            print(f"{'on' if vtlp else 'off':<6} {first:>17.1f} {cached:>15.1f}")


if __name__ == "__main__":
    main()
