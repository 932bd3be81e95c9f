"""Does the timeline read better adapted to the recording's voice? Per-window UA with and without.

    .venv/bin/python benchmarks/voice_timeline.py                          # checkpoints/default, 30 clips
    .venv/bin/python benchmarks/voice_timeline.py --checkpoint .cache/provisional --clips 20 --seeds 0 1

For each held-out test speaker of the checkpoint (its card's ``training.speakers.test``: never trained on,
never used to choose anything), ``--clips`` of that speaker's corpus clips (drawn at random with the seed,
among those whose emotion the model's label set keeps) are trimmed to their speech (an energy rule, not the
timeline's detector) and joined with pauses of 1.0-1.6 s of quiet noise into one recording: one voice, as
a talk or an interview with a single speaker. ``serdemo.timeline.analyze`` reads it twice, with
``adapt_voice`` off and on (everything else equal), and every window is scored against the true label of
the clip it covers (the clip its span overlaps most; windows overlapping no clip by half their length are
left out and counted). UA is the mean recall over the classes present, WA plain accuracy; the table gives
each speaker, the mean over speakers and the pooled windows. ``--reference CHECKPOINT`` reads the same
recordings with another checkpoint as well (clip by clip: e.g. the previous, non-adapting default).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SR = 16000


def trim(wave: np.ndarray, top_db: float = 35.0, hop: int = 160) -> np.ndarray:
    """From the first to the last 10-ms frame within ``top_db`` of the clip's loudest."""
    n = len(wave) // hop
    if n == 0:
        return wave
    db = 10 * np.log10((wave[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-12)
    loud = np.flatnonzero(db > db.max() - top_db)
    return wave[loud[0] * hop:(loud[-1] + 1) * hop]


def speaker_utterances(speaker: str, shared: Path, label_set) -> list:
    """The corpus clips of ``speaker`` ("corpus:id") whose emotion ``label_set`` keeps."""
    from training.corpora import scan

    corpus = speaker.split(":", 1)[0]
    root = shared / corpus
    if not root.is_dir():
        return []
    return [u for u in scan(corpus, root).utterances if u.speaker == speaker and label_set.map(u.emotion)]


def build_recording(utts: list, n: int, seed: int, path: Path, label_set) -> list[tuple[float, float, str]]:
    """``n`` of ``utts`` with pauses between, written to ``path`` (16 kHz); each clip's span and true class."""
    from serdemo.audio import load_audio

    rng = np.random.default_rng(seed)
    picked = random.Random(seed).sample(utts, min(n, len(utts)))
    parts, spans, t = [], [], 0
    for u in picked:
        gap = (rng.standard_normal(int(rng.uniform(1.0, 1.6) * SR)) * 1e-4).astype(np.float32)
        clip = trim(load_audio(u.path))
        parts += [gap, clip]
        t += len(gap)
        spans.append((t / SR, (t + len(clip)) / SR, label_set.map(u.emotion)))
        t += len(clip)
    parts.append((rng.standard_normal(SR) * 1e-4).astype(np.float32))
    sf.write(path, np.concatenate(parts), SR, subtype="PCM_16")
    return spans


def window_truth(windows, spans) -> list[str | None]:
    """The true class of each window: that of the clip it overlaps most (None: under half its length)."""
    out = []
    for w in windows:
        overlaps = [max(0.0, min(w.end_s, b) - max(w.start_s, a)) for a, b, _ in spans]
        k = int(np.argmax(overlaps))
        out.append(spans[k][2] if overlaps[k] >= 0.5 * (w.end_s - w.start_s) else None)
    return out


def ua_wa(truth: list[str], guess: list[str]) -> tuple[float, float]:
    truth, guess = np.asarray(truth), np.asarray(guess)
    if not len(truth):
        return float("nan"), float("nan")
    recalls = [float(np.mean(guess[truth == c] == c)) for c in np.unique(truth)]
    return float(np.mean(recalls)), float(np.mean(truth == guess))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "default"))
    p.add_argument("--clips", type=int, default=30, help="clips per recording (one speaker)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one recording per speaker and seed")
    p.add_argument("--speakers", nargs="*", help="corpus:id (default: the card's test speakers)")
    p.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", help="another checkpoint read on the same recordings (e.g. the previous default)")
    args = p.parse_args(argv)

    import torch

    from serdemo import timeline as T
    from serdemo.inference import Predictor
    from serdemo.labels import LABEL_SETS

    predictor = Predictor.from_checkpoint(args.checkpoint, "cpu")
    reference = Predictor.from_checkpoint(args.reference, "cpu") if args.reference else None
    torch.set_num_threads(args.threads)  # after loading: importing silero-vad sets torch to one thread
    card = predictor.card
    label_set = LABEL_SETS[card.get("label_set", {}).get("name", "ekman7")] \
        if isinstance(card.get("label_set"), dict) else LABEL_SETS["ekman7"]
    speakers = args.speakers or card.get("training", {}).get("speakers", {}).get("test", [])
    print(f"checkpoint {args.checkpoint} ({predictor.name}): adapts={predictor.adapts}; "
          f"{args.clips} clips per recording, seeds {args.seeds}; {len(speakers)} held-out speakers")
    if not predictor.adapts:
        print("this checkpoint does not adapt to a voice: both readings would be the same")
        return 1
    rows, pooled = [], {"truth": [], "off": [], "on": [], "ref": []}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serdemo-voice-timeline-") as tmp:
        for spk in speakers:
            utts = speaker_utterances(spk, Path(args.shared), label_set)
            if len(utts) < 4:
                print(f"{spk}: {len(utts)} usable clips, skipped")
                continue
            for seed in args.seeds:
                path = Path(tmp) / f"{spk.replace(':', '-')}-{seed}.wav"
                spans = build_recording(utts, args.clips, seed, path, label_set)
                res = {}
                for adapt in (False, True):
                    tl = T.analyze(path, predictor, adapt_voice=adapt)
                    truth = window_truth(tl.windows, spans)
                    keep = [i for i, t in enumerate(truth) if t is not None]
                    res[adapt] = ([truth[i] for i in keep], [tl.windows[i].label() for i in keep],
                                  len(tl.windows) - len(keep), tl.voice_windows, tl.elapsed_s)
                (truth, off, left, _, t_off), (_, on, _, voice_n, t_on) = res[False], res[True]
                ua0, wa0 = ua_wa(truth, off)
                ua1, wa1 = ua_wa(truth, on)
                ua_ref = float("nan")
                if reference is not None:
                    tl = T.analyze(path, reference, adapt_voice=False)
                    rtruth = window_truth(tl.windows, spans)
                    ref = [(t, w.label()) for t, w in zip(rtruth, tl.windows) if t is not None]
                    ua_ref = ua_wa([t for t, _ in ref], [g for _, g in ref])[0]
                    pooled["ref"] += ref
                rows.append((spk, seed, len(spans), len(truth), left, voice_n, ua0, ua1, wa0, wa1, ua_ref))
                pooled["truth"] += truth
                pooled["off"] += off
                pooled["on"] += on
                print(f"  {spk} seed {seed}: {len(truth)} windows ({left} left out), UA {ua0:.3f} -> {ua1:.3f}, "
                      f"WA {wa0:.3f} -> {wa1:.3f} ({t_off:.1f} s / {t_on:.1f} s)"
                      + (f"; reference UA {ua_ref:.3f}" if reference is not None else ""), flush=True)
    if not rows:
        print("no speaker had clips under --shared")
        return 1
    print()
    ref_head = f" UA {Path(args.reference).name} |" if reference is not None else ""
    print("| speaker | seed | clips | windows scored | adapted over | UA off | UA on | WA off | WA on |" + ref_head)
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if reference is not None else ""))
    for spk, seed, n, w, left, voice_n, ua0, ua1, wa0, wa1, ua_ref in rows:
        print(f"| {spk} | {seed} | {n} | {w}{f' (+{left} left out)' if left else ''} | {voice_n} | "
              f"{ua0:.3f} | {ua1:.3f} | {wa0:.3f} | {wa1:.3f} |" + (f" {ua_ref:.3f} |" if reference is not None else ""))
    mean = np.nanmean([[r[6], r[7], r[8], r[9], r[10]] for r in rows], axis=0)
    print(f"| mean over {len(rows)} recordings | | | | | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | {mean[3]:.3f} |"
          + (f" {mean[4]:.3f} |" if reference is not None else ""))
    ua0, wa0 = ua_wa(pooled["truth"], pooled["off"])
    ua1, wa1 = ua_wa(pooled["truth"], pooled["on"])
    ref_pooled = ""
    if reference is not None:
        ref_pooled = f" {ua_wa([t for t, _ in pooled['ref']], [g for _, g in pooled['ref']])[0]:.3f} |"
    print(f"| pooled ({len(pooled['truth'])} windows) | | | | | {ua0:.3f} | {ua1:.3f} | {wa0:.3f} | {wa1:.3f} |"
          + ref_pooled)
    better = sum(r[7] > r[6] + 1e-9 for r in rows)
    worse = sum(r[7] < r[6] - 1e-9 for r in rows)
    print(f"\nadapted UA higher on {better}, lower on {worse} of {len(rows)} recordings; "
          f"{time.perf_counter() - t_all:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
