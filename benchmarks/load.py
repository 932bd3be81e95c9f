"""Load test: N concurrent gradio_client users against a serdemo server for a bounded time.

Each user loops over a mix of requests:

* analyse a real corpus clip (dithered per request, so every upload is a new clip in the store), and
  relabel every second analysed clip with a random label, passing the clip id explicitly;
* a hostile upload (about one request in five): a text file named .wav, a truncated wav header, a
  0.1 s clip, silence, pink noise, a 440 Hz tone, a clip over the length limit, real speech at
  44,101 Hz and 383,999 Hz, six channels. Refusable inputs must come back as a clear error that
  leaks no server path and no traceback; speech at odd rates or channel counts must be analysed.

At the end the store's SQLite database is read back: every label a user saved must be there, on the
clip id that user analysed, with that user's name, and nothing else may be there (no lost and no
misattributed labels). The server's resident memory is read from /proc before the load (after one
warm-up analysis) and after it. Prints p50/p95 per endpoint and the counts.

    .venv/bin/python benchmarks/load.py --users 16 --seconds 300        # starts its own server
    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:7860/ --data-dir ./data   # a running one
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
REFUSE = {"not_audio", "truncated", "too_short", "silence", "pink_noise", "tone", "too_long"}
ACCEPT = {"rate_44101", "rate_383999", "six_channels"}
LEAK = re.compile(r"(/tmp/|/home/|/work/|/root/|Traceback|File \")")
HEX = re.compile(r"^[0-9a-f]{12,64}$")


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MB."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wav_bytes(x: np.ndarray, sr: int, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def hostile_files(folder: Path, speech: np.ndarray, sr: int, max_s: float) -> dict[str, Path]:
    """One file per hostile kind, written once."""
    rng = np.random.default_rng(0)
    t = np.arange(int(3 * sr)) / sr
    white = rng.standard_normal(int(10 * 16000)).astype(np.float32)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.arange(1, len(white) // 2 + 2)), len(white))
    odd = lambda rate: np.interp(np.arange(int(len(speech) * rate / sr)) * sr / rate, np.arange(len(speech)),
                                 speech).astype(np.float32)
    files = {
        "not_audio": b"this is not audio at all\n" * 40,
        "truncated": wav_bytes(speech, sr)[:30],
        "too_short": wav_bytes(speech[: int(0.1 * sr)], sr),
        "silence": wav_bytes(np.zeros(3 * sr, np.float32), sr),
        "pink_noise": wav_bytes((0.3 * pink / np.abs(pink).max()).astype(np.float32), 16000),
        "tone": wav_bytes((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr),
        "too_long": wav_bytes(np.tile(speech, int((max_s + 5) * sr / len(speech)) + 1), sr),
        "rate_44101": wav_bytes(odd(44101), 44101),
        "rate_383999": wav_bytes(odd(383999), 383999, subtype="FLOAT"),
        "six_channels": wav_bytes(np.stack([speech * (0.5 + 0.1 * c) for c in range(6)], 1), sr),
    }
    out = {}
    for kind, data in files.items():
        path = folder / f"{kind}.wav"
        path.write_bytes(data)
        out[kind] = path
    return out


def start_server(port: int, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "SERDEMO_DATA": str(data_dir),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(data_dir.parent / "server.log", "w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the server exited at start; see server.log")
            time.sleep(1)
    proc.kill()
    raise SystemExit("the server did not answer within 180 s")


def find_clip_id(outputs) -> str | None:
    for o in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        if isinstance(o, str) and HEX.match(o):
            return o
    return None


def run(url: str, users: int, seconds: float, clips: list[Path], model: str, hostile: dict[str, Path],
        tmp: Path) -> dict:
    from gradio_client import Client, handle_file

    lat: dict[str, list[float]] = defaultdict(list)
    outcome: Counter = Counter()
    problems: list[str] = []
    saved: list[tuple[str, str, str, float]] = []  # (clip id, label, annotator, duration_s)
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def note_problem(msg: str):
        with lock:
            outcome["server_error"] += 1
            problems.append(msg[:200])

    def user(uid: int):
        rng = random.Random(uid)
        nrng = np.random.default_rng(uid)
        who = f"load-{uid:02d}"
        try:
            client = Client(url, verbose=False)
        except Exception as exc:
            note_problem(f"connect: {exc}")
            return
        n = 0
        while time.monotonic() < stop:
            if rng.random() < 0.2:
                kind = rng.choice(sorted(hostile))
                t0 = time.perf_counter()
                try:
                    client.predict(handle_file(str(hostile[kind])), model, 1.1, api_name="/analyze")
                    with lock:
                        lat["analyze_hostile"].append(time.perf_counter() - t0)
                    if kind in REFUSE:
                        note_problem(f"{kind}: accepted, should have been refused")
                    else:
                        with lock:
                            outcome["odd_input_analysed"] += 1
                except Exception as exc:
                    msg = str(exc)
                    with lock:
                        lat["analyze_hostile"].append(time.perf_counter() - t0)
                    if kind in ACCEPT:
                        note_problem(f"{kind}: refused, should have been analysed: {msg}")
                    elif LEAK.search(msg) or not msg.strip():
                        note_problem(f"{kind}: error leaks a path or traceback or says nothing: {msg}")
                    elif "Connection" in type(exc).__name__:
                        note_problem(f"{kind}: {type(exc).__name__}: {msg}")
                    else:
                        with lock:
                            outcome["refused_clearly"] += 1
                continue
            clip = rng.choice(clips)
            x, sr = sf.read(str(clip), dtype="float32")
            x = x + nrng.normal(0, 1e-4, x.shape).astype(np.float32)  # a new clip every time
            path = tmp / f"u{uid}-{n}.wav"
            sf.write(str(path), x, sr)
            t0 = time.perf_counter()
            try:
                out = client.predict(handle_file(str(path)), model, 1.1, api_name="/analyze")
            except Exception as exc:
                note_problem(f"analyse {clip.name}: {type(exc).__name__}: {exc}")
                continue
            finally:
                path.unlink(missing_ok=True)
            with lock:
                lat["analyze"].append(time.perf_counter() - t0)
                outcome["analysed"] += 1
            n += 1
            clip_id = find_clip_id(out)
            if clip_id is None:
                note_problem("analyse returned no clip id")
                continue
            if n % 2 == 0:
                label = rng.choice(LABELS)
                t0 = time.perf_counter()
                try:
                    client.predict(clip_id, label, who, api_name="/relabel")
                except Exception as exc:
                    note_problem(f"relabel: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    lat["relabel"].append(time.perf_counter() - t0)
                    saved.append((clip_id, label, who, len(x) / sr))
                    outcome["relabelled"] += 1

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    wall = time.monotonic() - t_start
    return {"users": users, "wall_s": wall, "lat": lat, "outcome": outcome, "problems": problems, "saved": saved}


def check_store(data_dir: Path, saved) -> dict:
    """Every saved label present exactly once on its clip with its annotator; nothing else from the load."""
    db = next(iter(sorted(data_dir.glob("*.sqlite*")) + sorted(data_dir.glob("*.db"))), None)
    if db is None:
        return {"checked": False, "why": f"no database under {data_dir}"}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute("SELECT l.clip, l.label, l.annotator, c.duration_s FROM labels l "
                       "JOIN clips c ON c.sha256 = l.clip WHERE l.annotator LIKE 'load-%'").fetchall()
    con.close()
    stored = Counter((clip, label, who) for clip, label, who, _ in rows)
    durations = {clip: dur for clip, _, _, dur in rows}
    want = Counter()
    for clip_id, label, who, _ in saved:
        full = next((c for c, _, _ in stored if c.startswith(clip_id)), clip_id)
        want[(full, label, who)] += 1
    lost = sum((want - stored).values())
    extra = sum((stored - want).values())
    wrong_clip = 0
    for clip_id, _, _, dur in saved:  # the labelled clip is the one uploaded: same duration
        full = next((c for c in durations if c.startswith(clip_id)), None)
        if full is not None and abs(durations[full] - dur) > 0.05:
            wrong_clip += 1
    return {"checked": True, "labels_saved": len(saved), "labels_in_store": len(rows), "lost": lost,
            "unexpected": extra, "wrong_clip": wrong_clip}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (default: start one on a free port with a fresh store)")
    ap.add_argument("--data-dir", help="the running server's SERDEMO_DATA folder, to check the labels")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--model", default="default")
    shared = Path(os.environ.get("SERDEMO_SHARED_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--clips", default=str(shared / "emodb" / "wav"), help="real speech clips (wav) to upload")
    ap.add_argument("--max-duration", type=float, default=60.0, help="the server's SERDEMO_MAX_DURATION_S")
    args = ap.parse_args()
    clips = sorted(Path(args.clips).glob("*.wav"))[:60]
    if not clips:
        raise SystemExit(f"no wav files under {args.clips}")
    tmp = Path(tempfile.mkdtemp(prefix="serdemo-load-"))
    speech, sr = sf.read(str(clips[0]), dtype="float32")
    hostile = hostile_files(tmp, speech, sr, args.max_duration)
    proc = None
    if args.url:
        url, data_dir = args.url, Path(args.data_dir) if args.data_dir else None
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        data_dir = tmp / "store"
        data_dir.mkdir()
        proc = start_server(port, data_dir)
        url = f"http://127.0.0.1:{port}/"
    try:
        from gradio_client import Client, handle_file

        Client(url, verbose=False).predict(handle_file(str(clips[1])), args.model, 1.1, api_name="/analyze")
        rss0 = rss_mb(proc.pid) if proc else float("nan")
        r = run(url, args.users, args.seconds, clips, args.model, hostile, tmp)
        rss1 = rss_mb(proc.pid) if proc else float("nan")
        alive = proc is None or proc.poll() is None
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
    store = check_store(data_dir, r["saved"]) if data_dir else {"checked": False, "why": "no --data-dir"}
    o = r["outcome"]
    print(f"{args.users} users for {args.seconds:.0f} s against {'a running server' if args.url else 'python app.py'} "
          f"(model {args.model}; {os.cpu_count()} CPU cores shared by server and clients)")
    print(f"{'endpoint':<16} {'n':>6} {'p50 ms':>8} {'p95 ms':>8}")
    for name, v in sorted(r["lat"].items()):
        print(f"{name:<16} {len(v):>6} {1000 * percentile(v, 50):>8.0f} {1000 * percentile(v, 95):>8.0f}")
    print(f"requests/s {sum(len(v) for v in r['lat'].values()) / r['wall_s']:.2f}; analysed {o['analysed']}, "
          f"relabelled {o['relabelled']}, hostile refused clearly {o['refused_clearly']}, odd rates/channels "
          f"analysed {o['odd_input_analysed']}, server errors {o['server_error']}")
    if store["checked"]:
        print(f"store: {store['labels_saved']} labels saved, {store['labels_in_store']} in the store, lost "
              f"{store['lost']}, unexpected {store['unexpected']}, on the wrong clip {store['wrong_clip']}")
    else:
        print(f"store not checked: {store['why']}")
    print(f"server RSS: {rss0:.0f} MB after warm-up, {rss1:.0f} MB after the load; server alive: {alive}")
    for p in r["problems"][:10]:
        print("  problem:", p)
    bad = o["server_error"] or not alive or (store["checked"] and (store["lost"] or store["unexpected"]
                                                                    or store["wrong_clip"]))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
