"""``python -m serdemo.bench``: per-architecture size, latency and memory of one clip end to end.

End to end means: encoded wav bytes -> decode -> resample -> log-mel -> model -> probabilities,
the path the app takes for every upload. Prints a table; run on an idle machine.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from serdemo.checkpoint import CheckpointError, encoder_block, list_checkpoints
from serdemo.features import FeatureConfig
from serdemo.inference import Predictor
from serdemo.models import ARCHITECTURES, build_model, uses_encoder
from serdemo import encoders


def synthetic_clip(duration_s: float, sample_rate: int = 16000) -> bytes:
    """A vowel-like harmonic signal with a gliding pitch, as wav bytes."""
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 30))
    buf = io.BytesIO()
    sf.write(buf, (0.2 * x / np.abs(x).max()).astype(np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def speech_clip(duration_s: float, shared: Path) -> tuple[bytes, str]:
    """Real speech as wav bytes: EMO-DB clips end to end (speech almost throughout, the costliest
    case once silence is skipped), cut to ``duration_s``; the synthetic vowel when the corpus is absent."""
    files = sorted((shared / "emodb" / "wav").glob("*.wav"))[:8]
    if not files:
        return synthetic_clip(duration_s), "synthetic vowel (no EMO-DB found)"
    parts, total = [], 0
    for f in files:
        x, sr = sf.read(str(f), dtype="float32")
        parts.append(x)
        total += len(x)
        if total >= duration_s * sr:
            break
    x = np.concatenate(parts)[: int(duration_s * sr)]
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue(), f"EMO-DB speech, {len(parts)} clips end to end"


def untrained(arch: str, encoder: str = encoders.DEFAULT, **hparams) -> Predictor:
    fc = FeatureConfig()
    heads = {"emotion": ["c%d" % i for i in range(7)], "gender": ["female", "male"]}
    model = build_model(arch, fc.n_mels, {k: len(v) for k, v in heads.items()}, input_frame_rate_hz=fc.frame_rate_hz,
                        encoder=encoders.info(encoder), **hparams)
    card = {"features": fc.to_dict(), "heads": heads, "name": arch}
    if uses_encoder(model):
        card["encoder"] = encoder_block(encoders.load(encoder))
    return Predictor(model, card, device="cpu")


def with_bf16(predictor: Predictor, on: bool) -> Predictor:
    predictor.frontend.bf16 = on
    return predictor


def time_one(predictor: Predictor, clip: bytes, repeats: int) -> list[float]:
    predictor.predict(clip, alpha=None, require_speech=False)  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict(clip, alpha=None, require_speech=False)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=4.0, help="clip length in seconds")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--checkpoints", default="checkpoints", help="also time the shipped checkpoints here")
    p.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA",
                                                       str(Path(__file__).resolve().parents[2] / "shared" / "data")),
                   help="corpora folder the speech clip is taken from")
    p.add_argument("--only", default="", help="time only the rows whose name contains this text")
    args = p.parse_args(argv)
    clip, what = speech_clip(args.duration, Path(args.shared))
    all_threads = torch.get_num_threads()
    depth = encoders.info().n_layers
    rows = [(f"{arch} ({depth} layers)" if arch != "cnnlstm" else arch, untrained(arch)) for arch in ARCHITECTURES]
    rows += [(f"probe ({n} layers)", untrained("probe", n_layers=n)) for n in (4, 2)]
    for name in encoders.REGISTRY:  # every registered encoder under the probe, all its blocks run
        if name != encoders.DEFAULT:
            rows.append((f"probe on {name} ({encoders.info(name).n_layers} layers)", untrained("probe", encoder=name)))
    for c in list_checkpoints(args.checkpoints):
        try:
            rows.append((f"ckpt:{c.name}", Predictor.from_checkpoint(c, device="cpu")))
        except CheckpointError as exc:
            print(f"skipping {c.name}: {exc}")
    rows = [(f"{name} {'bf16' if on else 'fp32'}", pred, on) for name, pred in rows
            for on in ((False, True) if uses_encoder(pred.model) else (False,))]
    rows = [row for row in rows if args.only in row[0]]
    print(f"{args.duration:.1f} s clip ({what}), decode -> speech detection -> probabilities, median of {args.repeats}; "
          f"torch {torch.__version__}, {all_threads} threads available")
    print(f"{'model':<32} {'params':>9} {'ms 1 thr':>9} {'ms all':>8} {'RTF 1thr':>9} {'peak RSS MB':>12}")
    for name, pred, on in rows:
        with_bf16(pred, on)
        torch.set_num_threads(1)
        one = statistics.median(time_one(pred, clip, args.repeats))
        torch.set_num_threads(all_threads)
        many = statistics.median(time_one(pred, clip, args.repeats))
        params = sum(p.numel() for p in pred.model.parameters())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name:<32} {params:>9,d} {one:>9.2f} {many:>8.2f} {one / 1000 / args.duration:>9.4f} {rss:>12.0f}")


if __name__ == "__main__":
    main()
