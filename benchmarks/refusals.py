"""Refusals: how much real speech the speech detector refuses, and how much non-speech it lets through.

    python benchmarks/refusals.py [--limit N] [--corpora emodb,ravdess] [--compare] [--json OUT]

Issue 25, item 6. A clip is refused ("no speech") when the detector finds less than
``serdemo.vad.MIN_TOTAL_SPEECH_S`` of speech in it, as ``Predictor.predict_batch(require_speech=True)``
decides. Every clip of every corpus under ``--shared`` is scored in five conditions:

- ``plain``: as decoded (16 kHz).
- ``-20 dB``, ``-30 dB``: attenuated, then rounded to 16-bit PCM steps (as a recorder would store it).
- ``room``: a synthetic room: the clip convolved with an impulse response of a direct path plus an
  exponentially decaying Gaussian-noise tail (RT60 0.3-0.6 s, direct-to-reverberant ratio 0-6 dB),
  then background noise (pink and brown noise of equal power) added at an SNR of 10-20 dB relative to
  the active speech level (the power of the chunks within 20 dB of the loudest 32-ms chunk). The level of
  the loudest chunk is kept.
- ``room -30 dB``: that room, attenuated by 30 dB and rounded to 16 bits: a quiet home recording.

Random draws are seeded per clip and condition, so every run (and every detector) hears the same audio.
Non-speech that must still be refused: white, pink and brown noise, the room background alone, pure
tones, two-tone chords, log chirps, mains hum, synthetic music (chords of harmonic tones with a beat of
kick and hi-hat) and a synthetic melody (one line of harmonic notes, four a second, with vibrato), each at -20, -40, -60 and -80 dBFS (rms), 16-bit; and digital silence and 1-LSB dither.
The table counts how many of those are NOT refused.

``--compare`` scores everything twice, without and with the detector's level normalisation
(``SpeechDetector(normalise_level=False)`` is the detector as it was before it). ``--limit N`` keeps N
clips per corpus (dealt round-robin over its speakers) for a quick run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from serdemo.features import FeatureConfig  # noqa: E402
from serdemo.vad import CHUNK, MIN_TOTAL_SPEECH_S, SAMPLE_RATE as SR, SpeechDetector  # noqa: E402
from training.corpora import scan  # noqa: E402
from training.data import WaveCache  # noqa: E402

CORPORA = ("emodb", "ravdess", "nemo", "emovo")
CONDITIONS = ("plain", "-20 dB", "-30 dB", "room", "room -30 dB")
NONSPEECH = ("white", "pink", "brown", "room noise", "tone", "two tones", "chirp", "hum", "music", "melody")
NONSPEECH_LEVELS_DB = (-20.0, -40.0, -60.0, -80.0)
NONSPEECH_SECONDS = 4.0
LSB = 1.0 / 32768


# ---------------------------------------------------------------- signals

def seeded(*parts) -> np.random.Generator:
    """A generator seeded from strings (a clip's path and the condition): the same audio on every run."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def pcm16(x: np.ndarray) -> np.ndarray:
    """Rounded to 16-bit steps and clipped, as a PCM16 file would hold it."""
    return (np.clip(np.round(x * 32768), -32768, 32767) / 32768).astype(np.float32)


def chunk_db(x: np.ndarray) -> np.ndarray:
    """Power in dBFS of each 512-sample chunk (the detector's decision unit)."""
    n = max(1, len(x) // CHUNK)
    c = np.asarray(x[: n * CHUNK], np.float64)
    c = np.pad(c, (0, n * CHUNK - len(c))).reshape(n, CHUNK)
    return 10 * np.log10(np.mean(c * c, axis=1) + 1e-20)


def coloured_noise(n: int, rng: np.random.Generator, slope: float) -> np.ndarray:
    """Unit-rms noise with power falling as 1/f**slope (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = f[1] if len(f) > 1 else 1.0
    spec *= f ** (-slope / 2)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x * x)) + 1e-20)


def room_background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-rms room background: pink and brown noise of equal power."""
    x = coloured_noise(n, rng, 1.0) + coloured_noise(n, rng, 2.0)
    return x / np.sqrt(np.mean(x * x))


def impulse_response(rng: np.random.Generator) -> np.ndarray:
    """Direct path plus an exponentially decaying noise tail (RT60 0.3-0.6 s, DRR 0-6 dB)."""
    rt60 = rng.uniform(0.3, 0.6)
    drr_db = rng.uniform(0.0, 6.0)
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)  # -60 dB at rt60
    tail[: int(0.002 * SR)] = 0.0  # the first reflections arrive after the direct sound
    tail *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(tail * tail))
    tail[0] = 1.0
    return tail


def in_room(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip as heard in a reverberant room with background noise (SNR 10-20 dB); peak chunk level kept."""
    w = np.asarray(wave, np.float64)
    h = impulse_response(rng)
    m = len(w) + len(h) - 1
    size = 1 << (m - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(w, size) * np.fft.rfft(h, size), size)[: len(w)]
    db = chunk_db(y)
    active = db >= db.max() - 20.0
    speech_power = np.mean(10 ** (db[active] / 10))
    snr_db = rng.uniform(10.0, 20.0)
    y = y + room_background(len(y), rng) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    y *= 10 ** ((chunk_db(w).max() - chunk_db(y).max()) / 20)
    return y.astype(np.float32)


def condition(wave: np.ndarray, name: str, key: str) -> np.ndarray:
    rng = seeded(key, name)
    if name == "plain":
        return wave
    if name == "-20 dB":
        return pcm16(wave * 10 ** (-20 / 20))
    if name == "-30 dB":
        return pcm16(wave * 10 ** (-30 / 20))
    if name == "room":
        return in_room(wave, rng)
    if name == "room -30 dB":
        return pcm16(in_room(wave, rng) * 10 ** (-30 / 20))
    raise ValueError(name)


def harmonic_note(f0: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """A note of 6 harmonics (amplitude 1/k), a little vibrato, attack and decay."""
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.004 * np.sin(2 * np.pi * 5.5 * t))) / SR
    x = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7) if k * f0 < SR / 2)
    env = np.minimum(1.0, t / 0.02) * np.exp(-t / 0.6)
    return x * env


def music(n: int, rng: np.random.Generator) -> np.ndarray:
    """Chords of harmonic tones, one every beat (100-140 bpm), a bass note, kick and hi-hat on the beat."""
    bpm = rng.uniform(100, 140)
    beat = int(60 / bpm * SR)
    root = 110 * 2 ** (rng.integers(0, 12) / 12)
    chords = [(0, 4, 7), (5, 9, 12), (7, 11, 14), (-3, 0, 4)]  # I IV V vi
    x = np.zeros(n + 2 * SR)
    for i, start in enumerate(range(0, n, beat)):
        steps = chords[(i // 2) % len(chords)]
        seg = sum(harmonic_note(2 * root * 2 ** (s / 12), 2 * beat, rng) for s in steps)
        seg = seg + 1.5 * harmonic_note(root * 2 ** (steps[0] / 12) / 2, 2 * beat, rng)
        tt = np.arange(int(0.15 * SR)) / SR
        kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-tt / 0.03)) * tt) * np.exp(-tt / 0.08) * 3
        hat_len = int(0.05 * SR)
        hat = rng.standard_normal(hat_len) * np.exp(-np.arange(hat_len) / (0.01 * SR))
        hat = np.diff(hat, prepend=0.0)  # high-passed
        x[start: start + len(seg)] += seg
        x[start: start + len(kick)] += kick
        off = start + beat // 2
        x[off: off + hat_len] += hat
    return x[:n]


def nonspeech(kind: str, seed: int, seconds: float = NONSPEECH_SECONDS) -> np.ndarray:
    """One unit-rms non-speech signal of ``kind`` (float64)."""
    rng = seeded("nonspeech", kind, seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = coloured_noise(n, rng, 1.0)
    elif kind == "brown":
        x = coloured_noise(n, rng, 2.0)
    elif kind == "room noise":
        x = room_background(n, rng)
    elif kind == "tone":
        x = np.sin(2 * np.pi * 10 ** rng.uniform(2, np.log10(4000)) * t)
    elif kind == "two tones":
        f = 10 ** rng.uniform(2, np.log10(2000))
        x = np.sin(2 * np.pi * f * t) + np.sin(2 * np.pi * f * 1.5 * t + 1.0)
    elif kind == "chirp":
        f0, f1 = 100.0, 4000.0
        if seed % 2:
            f0, f1 = f1, f0
        k = np.log(f1 / f0) / seconds
        x = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    elif kind == "hum":
        mains = 50.0 if seed % 2 == 0 else 60.0
        x = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3, 5))
    elif kind == "music":
        x = music(n, rng)
    elif kind == "melody":
        note = SR // 4
        x = np.zeros(n)
        for start in range(0, n, note):
            f0 = 220 * 2 ** (rng.integers(0, 12) / 12)
            x[start: start + note] = harmonic_note(f0, note, rng)[: n - start]
    else:
        raise ValueError(kind)
    x = np.asarray(x, np.float64)
    return x / (np.sqrt(np.mean(x * x)) + 1e-20)


def nonspeech_set(seeds: int) -> list[tuple[str, np.ndarray]]:
    """(kind, wave) pairs: every kind at every level, ``seeds`` draws each; then silence and dither."""
    out = []
    for kind in NONSPEECH:
        for level in NONSPEECH_LEVELS_DB:
            for s in range(seeds):
                out.append((kind, pcm16(nonspeech(kind, s) * 10 ** (level / 20))))
    n = int(NONSPEECH_SECONDS * SR)
    for s in range(seeds):
        out.append(("silence", np.zeros(n, np.float32)))
        rng = seeded("dither", s)
        out.append(("1-LSB dither", ((rng.random(n) - rng.random(n)) * LSB).astype(np.float32)))
    return out


# ---------------------------------------------------------------- scoring

def speech_seconds(det: SpeechDetector, waves: list[np.ndarray], batch_s: float = 120.0) -> np.ndarray:
    """Seconds of detected speech per clip, on the log-mel grid as Predictor.speech_masks computes it;
    clips batched by similar length (``batch_s`` seconds of padded audio per batch)."""
    features = FeatureConfig()
    order = np.argsort([len(w) for w in waves])
    out = np.zeros(len(waves))
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * len(waves[order[j]]) <= batch_s * SR:
            j += 1
        idx = order[i:j]
        ws = [waves[k] for k in idx]
        masks = det.frame_masks(ws, [max(1, int(features.num_frames(len(w)))) for w in ws])
        for k, m in zip(idx, masks):
            out[k] = det.speech_seconds(m)
        i = j
    return out


def deal(utterances, limit: int):
    """At most ``limit`` utterances, dealt round-robin over speakers (in file order within a speaker)."""
    if limit <= 0:
        return list(utterances)
    by = defaultdict(list)
    for u in utterances:
        by[u.speaker].append(u)
    queues = [by[s] for s in sorted(by)]
    out = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def detectors(compare: bool, backend: str) -> dict[str, SpeechDetector]:
    if not compare:
        return {"detector": SpeechDetector(backend=backend)}
    return {"before (no level normalisation)": SpeechDetector(backend=backend, normalise_level=False),
            "after": SpeechDetector(backend=backend)}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    dets = detectors(args.compare, args.backend)
    cache = WaveCache()
    result = {"min_total_speech_s": MIN_TOTAL_SPEECH_S, "conditions": list(CONDITIONS),
              "detectors": {name: {"speech": {}, "nonspeech": {}} for name in dets}}
    t0 = time.perf_counter()
    for kind in args.corpora:
        root = Path(args.shared) / kind
        if not root.is_dir():
            print(f"{kind}: not found under {args.shared}; skipped", file=sys.stderr)
            continue
        utts = deal(scan(kind, root).utterances, args.limit)
        waves = [cache.get(u.path) for u in utts]
        for cond in CONDITIONS:
            ws = [condition(w, cond, u.path) for u, w in zip(utts, waves)]
            for name, det in dets.items():
                s = speech_seconds(det, ws)
                refused = [u.path for u, v in zip(utts, s) if v < MIN_TOTAL_SPEECH_S]
                result["detectors"][name]["speech"].setdefault(kind, {})[cond] = {
                    "clips": len(utts), "refused": len(refused), "refused_files": refused[:50],
                    "median_speech_s": float(np.median(s)) if len(s) else 0.0}
        print(f"  {kind}: {len(utts)} clips x {len(CONDITIONS)} conditions ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    ns = nonspeech_set(args.nonspeech_seeds)
    for name, det in dets.items():
        s = speech_seconds(det, [w for _, w in ns])
        table = result["detectors"][name]["nonspeech"]
        for (kind, _), v in zip(ns, s):
            row = table.setdefault(kind, {"clips": 0, "not_refused": 0, "max_speech_s": 0.0})
            row["clips"] += 1
            row["not_refused"] += int(v >= MIN_TOTAL_SPEECH_S)
            row["max_speech_s"] = max(row["max_speech_s"], float(v))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:5.1f} %" if b else "    -  "


def print_tables(result: dict) -> None:
    conds = result["conditions"]
    for name, res in result["detectors"].items():
        print(f"\n## {name}: real speech refused (less than {result['min_total_speech_s']} s of speech found)")
        print("| corpus | clips | " + " | ".join(conds) + " |")
        print("|---|---:|" + "---:|" * len(conds))
        total = defaultdict(lambda: [0, 0])
        for kind, rows in res["speech"].items():
            cells = []
            for c in conds:
                r = rows[c]
                total[c][0] += r["refused"]
                total[c][1] += r["clips"]
                cells.append(f"{r['refused']} ({pct(r['refused'], r['clips']).strip()})")
            print(f"| {kind} | {rows[conds[0]]['clips']} | " + " | ".join(cells) + " |")
        if len(res["speech"]) > 1:
            cells = [f"{total[c][0]} ({pct(*total[c]).strip()})" for c in conds]
            print(f"| all | {total[conds[0]][1]} | " + " | ".join(cells) + " |")
        print(f"\n## {name}: non-speech NOT refused (levels {', '.join(f'{x:g}' for x in NONSPEECH_LEVELS_DB)} dBFS)")
        print("| signal | clips | not refused | most speech found (s) |")
        print("|---|---:|---:|---:|")
        for kind, r in res["nonspeech"].items():
            print(f"| {kind} | {r['clips']} | {r['not_refused']} ({pct(r['not_refused'], r['clips']).strip()}) "
                  f"| {r['max_speech_s']:.2f} |")
    print(f"\n({result['seconds']} s)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("SERDEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--corpora", default=",".join(CORPORA), help="comma-separated corpus kinds")
    ap.add_argument("--limit", type=int, default=0, help="clips per corpus (0: all)")
    ap.add_argument("--nonspeech-seeds", type=int, default=8, help="draws per non-speech kind and level")
    ap.add_argument("--compare", action="store_true", help="also score without level normalisation (before)")
    ap.add_argument("--backend", default="auto", choices=("auto", "silero", "energy"))
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--json", help="write the result here as JSON")
    args = ap.parse_args(argv)
    args.corpora = [c for c in args.corpora.split(",") if c]
    result = run(args)
    print_tables(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
