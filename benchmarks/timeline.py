"""Real-time factor and peak memory of the timeline (serdemo.timeline.analyze) on long recordings.

    .venv/bin/python benchmarks/timeline.py                 # 1, 10 and 30 minutes
    .venv/bin/python benchmarks/timeline.py --minutes 1 10 --threads 1 2

Each recording is real corpus speech (EMO-DB, RAVDESS and nEMO clips of every emotion, in a fixed
shuffled order) with pauses of 0.6-2.0 s between clips, written as a 16 kHz 16-bit wav; each is
analysed in a fresh process (the best device; one torch thread unless --threads says otherwise, as
``python -m serdemo.timeline`` runs one worker per core), so its peak RSS is its own. The time is the
whole of ``analyze``: decoding, resampling, speech detection, windows and the model.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, os, resource, sys, time
import torch
from serdemo.inference import Predictor
from serdemo import timeline as T
p = Predictor.from_checkpoint(sys.argv[1], os.environ.get("SERDEMO_DEVICE") or None)
# after loading: importing silero-vad sets torch to one thread
torch.set_num_threads(int(sys.argv[4]) or os.cpu_count() or 1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
tl = T.analyze(sys.argv[2], p, max_duration_s=float(sys.argv[3]))
elapsed = time.perf_counter() - t0
print(json.dumps(dict(elapsed_s=elapsed, duration_s=tl.duration_s, segments=len(tl.segments),
                      windows=len(tl.windows), base_mb=base, device=str(p.device), threads=torch.get_num_threads(),
                      peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def corpus_clips(shared: Path) -> list[Path]:
    clips = sorted((shared / "emodb" / "wav").glob("*.wav"))
    clips += sorted((shared / "ravdess").glob("Actor_*/*.flac"))
    clips += sorted((shared / "nemo" / "samples").glob("*.flac"))
    random.Random(0).shuffle(clips)
    return clips


def write_recording(path: Path, minutes: float, clips: list[Path]) -> int:
    """Clips with pauses until ``minutes`` are filled; returns how many clips went in."""
    from serdemo.audio import load_audio

    rng = np.random.default_rng(0)
    total = int(minutes * 60 * 16000)
    written = used = 0
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
        while written < total:
            gap = (rng.standard_normal(int(rng.uniform(0.6, 2.0) * 16000)) * 3e-4).astype(np.float32)
            clip = load_audio(clips[used % len(clips)], max_duration_s=60)
            piece = np.concatenate([gap, clip])[: total - written]
            f.write(piece)
            written += len(piece)
            used += 1
    return used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 30])
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads, one run each (0: every core)")
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    import json

    clips = corpus_clips(Path(args.shared))
    if not clips:
        sys.exit(f"no corpus clips under {args.shared}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"timeline benchmark: {args.checkpoint}, {os.cpu_count()} CPUs; real corpus speech with pauses")
    print(f"{'audio':>8} {'threads':>7} {'clips':>6} {'segments':>8} {'windows':>7} {'analysed in':>11} {'RTF':>7} "
          f"{'x real time':>11} {'peak RSS MB':>11} {'after load MB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"{minutes:g}min.wav"
            used = write_recording(path, minutes, clips)
            for threads in args.threads:
                out = subprocess.run([sys.executable, "-c", CHILD, args.checkpoint, str(path), str(minutes * 60 + 1),
                                      str(threads)], capture_output=True, text=True, env=env, cwd=ROOT)
                if out.returncode != 0:
                    sys.exit(out.stderr[-3000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rtf = r["elapsed_s"] / r["duration_s"]
                print(f"{minutes:>6g} m {r['threads']:>7} {used:>6} {r['segments']:>8} {r['windows']:>7} "
                      f"{r['elapsed_s']:>9.1f} s "
                      f"{rtf:>7.4f} {1 / rtf:>10.0f}x {r['peak_mb']:>11.0f} {r['base_mb']:>13.0f}", flush=True)
            path.unlink()
    print(f"device {r['device']}")


if __name__ == "__main__":
    main()
