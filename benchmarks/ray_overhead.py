"""What Ray costs on one machine: the same files through ``python -m serdemo.score`` with the local engine
and with ``--engine ray`` (a local Ray started by the command), in the same run.

    .venv/bin/python benchmarks/ray_overhead.py                 # 60 minutes of speech
    .venv/bin/python benchmarks/ray_overhead.py --minutes 10 --repeat 2

The files are real corpus speech: EMO-DB, RAVDESS and nEMO clips (every emotion, a fixed shuffled order),
each written as a 16 kHz 16-bit wav with a pause of 0.6-2.0 s of faint noise before and after it, until
``--minutes`` of audio are filled. Each command runs in a fresh process with its defaults (one worker per
core, one torch thread each; Ray: one actor per CPU), so the wall time includes everything a user waits
for: start-up, the model loaded in every worker, the scoring and, for Ray, starting and stopping Ray. The
two CSVs are compared (same rows, probabilities to 1e-5).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SR = 16000


def corpus_clips(shared: Path) -> list[Path]:
    clips = sorted((shared / "emodb" / "wav").glob("*.wav"))
    clips += sorted((shared / "ravdess").glob("Actor_*/*.flac"))
    clips += sorted((shared / "nemo" / "samples").glob("*.flac"))
    random.Random(0).shuffle(clips)
    return clips


def write_files(folder: Path, minutes: float, clips: list[Path]) -> tuple[int, float]:
    """Clips with pauses, one wav each, until ``minutes`` are filled: ``(files, seconds of audio)``."""
    from serdemo.audio import load_audio

    rng = np.random.default_rng(0)
    total = minutes * 60 * SR
    written = n = 0
    while written < total:
        def gap():
            return (rng.standard_normal(int(rng.uniform(0.6, 2.0) * SR)) * 3e-4).astype(np.float32)

        wave = np.concatenate([gap(), load_audio(clips[n % len(clips)], max_duration_s=60), gap()])
        sf.write(folder / f"{n:05d}.wav", wave, SR, subtype="PCM_16")
        written += len(wave)
        n += 1
    return n, written / SR


def run(args: list[str]) -> tuple[float, float, str]:
    """One command in a fresh process: ``(wall seconds, scoring seconds from its summary line, stderr)``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "serdemo.score", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"serdemo.score exited {r.returncode}:\n{r.stderr[-3000:]}")
    m = re.search(r"(\d+) files in ([\d.]+) s", r.stderr)
    return wall, float(m.group(2)) if m else float("nan"), r.stderr


def compare(a: Path, b: Path) -> tuple[int, float]:
    """Rows in both CSVs (by path) and the largest probability difference; exits when the rows differ."""
    def rows(p):
        with open(p, newline="") as f:
            return {r["path"]: r for r in csv.DictReader(f)}

    ra, rb = rows(a), rows(b)
    if ra.keys() != rb.keys():
        sys.exit("the two engines scored different files")
    worst = 0.0
    for k, x in ra.items():
        y = rb[k]
        if x["status"] != y["status"] or x["label"] != y["label"]:
            sys.exit(f"{k}: {x['status']} {x['label']} against {y['status']} {y['label']}")
        for c in x:
            if c.startswith("p_") and x[c]:
                worst = max(worst, abs(float(x[c]) - float(y[c])))
    return len(ra), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of audio (default 60)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each engine, alternating (the best is kept)")
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    clips = corpus_clips(Path(args.shared))
    if not clips:
        sys.exit(f"no corpus clips under {args.shared}")
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        folder = Path(tmp) / "audio"
        folder.mkdir()
        n, seconds = write_files(folder, args.minutes, clips)
        common = [str(folder), "--checkpoint", args.checkpoint]
        results: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        for _ in range(args.repeat):
            for engine in ("local", "ray"):
                wall, scoring, _ = run([*common, "--out", str(Path(tmp) / f"{engine}.csv"), "--engine", engine])
                results[engine].append((wall, scoring))
                print(f"  {engine}: {wall:.1f} s", file=sys.stderr)
        rows, worst = compare(Path(tmp) / "local.csv", Path(tmp) / "ray.csv")
    best = {e: min(r) for e, r in results.items()}
    print(f"Ray overhead: {n} files, {seconds / 60:.1f} min of real speech (clips with pauses), "
          f"{os.cpu_count()} CPUs, {Path(args.checkpoint).name}; best of {args.repeat}")
    print(f"{'engine':<7}{'wall s':>9}{'scoring s':>11}{'x real time':>13}")
    for e, (wall, scoring) in best.items():
        print(f"{e:<7}{wall:>9.1f}{scoring:>11.1f}{seconds / wall:>13.0f}")
    lw, rw = best["local"][0], best["ray"][0]
    print(f"Ray's overhead: {rw - lw:+.1f} s ({100 * (rw - lw) / lw:+.1f} %) wall; rows identical: {rows} rows, "
          f"largest probability difference {worst:.1e}")


if __name__ == "__main__":
    main()
