"""Abuse benchmark (issue 16): ordinary users beside a hostile client, against ``python app.py``.

Starts the app on a fresh store (its own temp folder, logins for every client), then for ``--seconds`` mixes
``--users`` ordinary gradio_client users (analyse a corpus clip, label it, now and then a timeline and an
export) with one hostile client cycling through the issue's cases: a many-channel high-rate Ogg of
near-silence (small on disk, large decoded), 0-byte and random-byte "audio", a 20 MB random upload, a 10 MB
annotator name, ``/queue`` with limit 10^9, a non-numeric alpha, back-to-back retrains, a file path outside
the allowed folders, wrong passwords, and the live microphone reached as a page reaches it (its private events
by the ``fn_index`` that ``/config`` lists, over Gradio's queue: ``/queue/join``, chunks posted to
``/stream/{event}``, ``/queue/data`` read): chunks of 0 bytes, random bytes and a float wav of huge values,
chunks of 60 s and 30 min of 8 kHz audio, and streams opened and never stopped. Prints per-route p50/p95 and
errors, the server's peak and final RSS (its own process; a retraining run is a separate process, reported
beside), disk used by the store, serdemo's temp folders and Gradio's cache (at the start, at the peak, and
after the housekeeping sweep), and labels sent/stored/lost/misattributed.

    .venv/bin/python benchmarks/abuse.py --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from serdemo.housekeeping import size_of  # noqa: E402  (one definition of "bytes under a path")

SHARED = Path(os.environ.get("SERDEMO_SHARED_DATA", ROOT.parent / "shared" / "data"))
LABELS = ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
PASSWORD = "benchmark-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children_rss_mb(pid: int) -> float:
    """RSS of the server's descendant processes (a retraining run and what it starts)."""
    parent: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            parent[int(status.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        total += sum(rss_mb(c) for c in kids)
        todo += kids
    return total


def du_mb(path: Path, prefix: str | None = None) -> float:
    """MB under ``path`` (only its entries named ``prefix``... when given)."""
    if not path.exists():
        return 0.0
    return sum(size_of(p) for p in path.iterdir() if prefix is None or p.name.startswith(prefix)) / 1e6


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.refused: dict[str, int] = defaultdict(int)  # hostile requests answered with an error (expected)
        self.samples: dict[str, list[str]] = defaultdict(list)

    def record(self, route: str, seconds: float, error: Exception | None = None, hostile: bool = False):
        with self.lock:
            self.times[route].append(seconds)
            if error is not None:
                (self.refused if hostile else self.errors)[route] += 1
                if len(self.samples[route]) < 2:
                    self.samples[route].append(" ".join(str(error).split())[:160])


def timed(stats: Stats, route: str, fn, hostile: bool = False):
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is counted
        stats.record(route, time.perf_counter() - t0, exc, hostile)
        return None
    stats.record(route, time.perf_counter() - t0, None, hostile)
    return out


# ----------------------------------------------------------------------------------------- inputs
def make_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rng = np.random.default_rng(0)
    # many channels x high rate x seconds of near-silence: small as Ogg, large decoded (the issue: 64 x 192 kHz x 60 s)
    ch, rate, secs = 32, 192_000, 10
    wave = (rng.standard_normal((rate * secs, ch)) * 1e-4).astype(np.float32)
    files["multichannel.ogg"] = folder / "multichannel.ogg"
    sf.write(files["multichannel.ogg"], wave, rate, format="OGG", subtype="VORBIS")
    del wave
    files["empty.wav"] = folder / "empty.wav"
    files["empty.wav"].write_bytes(b"")
    files["garbage.wav"] = folder / "garbage.wav"
    files["garbage.wav"].write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    files["random20mb.bin"] = folder / "random20mb.bin"
    files["random20mb.bin"].write_bytes(rng.integers(0, 256, 20_000_000, dtype=np.uint8).tobytes())
    files["float.wav"] = folder / "float.wav"
    sf.write(files["float.wav"], (rng.standard_normal(16000) * 1e9).astype(np.float32), 16000, subtype="FLOAT")
    # the live microphone's chunks: what a page streams (0.5 s of 48 kHz int16), and chunks no microphone sends
    files["live chunk.wav"] = folder / "live chunk.wav"
    sf.write(files["live chunk.wav"], (rng.standard_normal(24000) * 300).astype(np.int16), 48000, subtype="PCM_16")
    files["live float 1e9.wav"] = folder / "live float 1e9.wav"  # the page's rate and length, absurd values
    sf.write(files["live float 1e9.wav"], (rng.standard_normal(24000) * 1e9).astype(np.float32), 48000, subtype="FLOAT")
    files["live 60 s.wav"] = folder / "live 60 s.wav"
    sf.write(files["live 60 s.wav"], (rng.standard_normal(8000 * 60) * 300).astype(np.int16), 8000, subtype="PCM_16")
    files["live 30 min.wav"] = folder / "live 30 min.wav"  # the 28.8 MB chunk
    sf.write(files["live 30 min.wav"], (rng.standard_normal(8000 * 1800) * 300).astype(np.int16), 8000,
             subtype="PCM_16")
    clips = sorted((SHARED / "emodb" / "wav").glob("*.wav"))[:60]
    if not clips:
        raise SystemExit(f"no EMO-DB clips under {SHARED}: set SERDEMO_SHARED_DATA")
    files["clips"] = clips  # type: ignore[assignment]
    long = np.concatenate([sf.read(c, dtype="float32")[0] for c in clips[:6]])
    files["timeline.wav"] = folder / "timeline.wav"
    sf.write(files["timeline.wav"], long, 16000)
    return files


# ----------------------------------------------------------------------------------------- clients
def ordinary_user(i: int, url: str, files: dict, stop: threading.Event, stats: Stats, sent: list, sent_lock):
    from gradio_client import Client, handle_file
    name = f"user{i:02d}"
    try:
        client = Client(url, auth=(name, PASSWORD), verbose=False)
    except Exception as exc:  # noqa: BLE001
        stats.record("login", 0.0, exc)
        return
    rng = random.Random(i)
    n = 0
    while not stop.is_set():
        n += 1
        clip = rng.choice(files["clips"])
        out = timed(stats, "/analyze", lambda: client.predict(handle_file(str(clip)), "default", 1.0,
                                                              api_name="/analyze"))
        if out:
            clip_id = out[4]
            label = rng.choice(LABELS)
            if timed(stats, "/relabel", lambda: client.predict(clip_id, label, name, api_name="/relabel")) is not None:
                with sent_lock:
                    sent.append((clip_id, label, name))
        if n % 4 == 0:
            timed(stats, "/queue", lambda: client.predict(50, "all", api_name="/queue"))
            timed(stats, "/agreement", lambda: client.predict(api_name="/agreement"))
        if n % 8 == i % 8 and i % 4 == 0:
            timed(stats, "/timeline", lambda: client.predict(handle_file(str(files["timeline.wav"])), "default",
                                                             api_name="/timeline"))
        if n % 10 == i % 10:
            timed(stats, "/export", lambda: client.predict("audiofolder", api_name="/export"))


def raw_call(url: str, api: str, data: list, cookies: str = "") -> str:
    body = json.dumps({"data": data}).encode()
    req = urllib.request.Request(f"{url}/gradio_api/call/{api}", data=body,
                                 headers={"Content-Type": "application/json", "Cookie": cookies})
    with urllib.request.urlopen(req, timeout=120) as r:
        event = json.loads(r.read())["event_id"]
    req = urllib.request.Request(f"{url}/gradio_api/call/{api}/{event}", headers={"Cookie": cookies})
    with urllib.request.urlopen(req, timeout=300) as r:
        text = r.read().decode()
    if "event: error" in text:
        raise RuntimeError(text[-200:])
    return text


def login(url: str, user: str, pw: str) -> tuple[int, str]:
    data = urllib.parse.urlencode({"username": user, "password": pw}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/login", data=data), timeout=60) as r:
            return r.status, "; ".join(c.split(";", 1)[0] for c in r.headers.get_all("set-cookie") or [])
    except urllib.error.HTTPError as exc:
        return exc.code, ""


# ----------------------------------------------------------------------------------------- the live microphone
class LiveRefused(RuntimeError):
    """The server refused a live stream's chunk or call (the message is what the page would show)."""


class LiveUnserved(RuntimeError):
    """A live call was not served in time (it waited in the queue)."""


class LiveSession:
    """One page's live microphone, spoken in raw HTTP as the browser speaks it: the stream's events are private
    (no API name, not callable through gradio_client), so they are called by the ``fn_index`` that ``/config``
    lists, through ``/gradio_api/queue/join``; a stream's later chunks are posted to
    ``/gradio_api/stream/{event}``; the answers are read from ``/gradio_api/queue/data`` (server-sent events)."""

    def __init__(self, url: str, cookies: str, fns: dict[str, int], mic: int):
        import httpx
        self.fns, self.mic, self.hash = fns, mic, secrets.token_hex(6)
        self.http = httpx.Client(base_url=f"{url}/gradio_api", headers={"Cookie": cookies},
                                 timeout=httpx.Timeout(120, read=120))
        self.msgs: queue.Queue = queue.Queue()
        self.reader: threading.Thread | None = None
        self.gen = 0  # which reader is current: the server closes the event stream when no event is pending
        self.response = None
        self.closing = threading.Event()

    # --- transport
    def _spawn(self) -> None:
        if self.reader is not None:
            self.reader.join(timeout=5)  # it has ended or is ending
        self.gen += 1
        self.reader = threading.Thread(target=self._read, args=(self.gen,), daemon=True)
        self.reader.start()

    def _read(self, gen: int) -> None:
        import httpx
        try:
            with self.http.stream("GET", "/queue/data", params={"session_hash": self.hash},
                                  timeout=httpx.Timeout(30, read=90)) as r:
                self.response = r
                for line in r.iter_lines():
                    if self.closing.is_set():
                        return
                    if line.startswith("data: "):
                        msg = json.loads(line[6:])
                        self.msgs.put(msg)
                        if msg.get("msg") == "close_stream":
                            return
        except Exception as exc:  # noqa: BLE001 - reported to the waiter
            if not self.closing.is_set():
                self.msgs.put({"msg": "reader_error", "error": f"{type(exc).__name__}: {exc}", "gen": gen})
        finally:
            self.msgs.put({"msg": "reader_end", "gen": gen})

    def upload(self, path: Path) -> dict:
        with open(path, "rb") as f:
            r = self.http.post("/upload", files={"files": (path.name, f, "audio/wav")})
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def join(self, what: str, data: list) -> str:
        body = {"data": data, "fn_index": self.fns[what], "session_hash": self.hash, "event_data": None,
                "trigger_id": self.mic}
        r = self.http.post("/queue/join", json=body)
        if r.status_code != 200:
            raise LiveRefused(f"/queue/join {what}: HTTP {r.status_code} {r.text[:120]}")
        event = r.json()["event_id"]
        if self.reader is None or not self.reader.is_alive():
            self._spawn()
        return event

    def wait(self, event: str, timeout: float) -> dict:
        """The event's next answer: a streamed output or its completion."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise LiveUnserved(f"no answer in {timeout:.0f} s (waiting in the live queue)")
            try:
                msg = self.msgs.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("msg") == "reader_end" and msg.get("gen") == self.gen and not self.closing.is_set():
                time.sleep(0.1)  # the server closed the stream as this event joined: read again
                self._spawn()
                continue
            if msg.get("event_id") == event and msg.get("msg") in ("process_streaming", "process_generating",
                                                                    "process_completed"):
                return msg

    @staticmethod
    def refusal(msg: dict) -> str | None:
        """The message of a completion that failed ('' when the server gave none); None when it succeeded."""
        if msg.get("msg") != "process_completed" or msg.get("success"):
            return None
        out = msg.get("output") or {}
        return str(out.get("error") or "") if isinstance(out, dict) else str(out or "")

    def call(self, what: str, data: list, timeout: float = 180) -> dict:
        event = self.join(what, data)
        msg = self.wait(event, timeout)
        while msg.get("msg") != "process_completed":
            msg = self.wait(event, timeout)
        why = self.refusal(msg)
        if why is not None:
            raise LiveRefused(why or f"{what} refused with no message")
        return msg

    def post_chunk(self, event: str, chunk: dict) -> None:
        body = {"data": [chunk, None, "default", True], "fn_index": self.fns["stream"], "session_hash": self.hash,
                "event_data": None, "trigger_id": self.mic, "event_id": event}
        r = self.http.post(f"/stream/{event}", json=body)
        if r.status_code != 200:
            raise LiveRefused(f"/stream: HTTP {r.status_code}")

    def close_stream(self, event: str) -> None:
        self.http.post(f"/stream/{event}/close", json={})

    def walk_away(self) -> None:
        """Stop reading and drop the connection: no close, no stop (an API client that never stops)."""
        self.closing.set()
        try:
            if self.response is not None:
                self.response.close()
        except Exception:  # noqa: BLE001
            pass
        self.http.close()


class LiveProbe:
    """The hostile client's live cases: a stream that gets a bad chunk after a good one, and streams opened and
    never stopped. Each case raises on a refusal (counted as the expected answer) and notes in ``counts`` what
    a refusal looked like (with a message, without one, or not served in time)."""

    SERVE_S = 45.0  # how long a stream's first chunk may wait in the live queue before the case gives up

    def __init__(self, url: str, cookies: str, files: dict, stats: Stats, counts: dict):
        self.url, self.cookies, self.files, self.stats, self.counts = url, cookies, files, stats, counts
        self.fns: dict[str, int] = {}
        self.mic = -1
        self.found = ""

    def discover(self) -> None:
        """The microphone's events, by fn_index, from the page's own /config (what the browser reads)."""
        if self.fns:
            return
        req = urllib.request.Request(f"{self.url}/config", headers={"Cookie": self.cookies})
        with urllib.request.urlopen(req, timeout=60) as r:
            config = json.loads(r.read())
        mics = [c["id"] for c in config.get("components", []) if (c.get("props") or {}).get("elem_id") == "live-mic"]
        if not mics:
            raise LiveRefused("no live microphone in /config")
        self.mic = mics[0]
        fns = {}
        for dep in config.get("dependencies", []):
            for target in dep.get("targets", []):
                if target[0] == self.mic and target[1] in ("start_recording", "stream", "stop_recording"):
                    fns[target[1]] = dep["id"]
        if set(fns) != {"start_recording", "stream", "stop_recording"}:
            raise LiveRefused(f"the microphone's events are not in /config (found {sorted(fns)})")
        self.fns = fns
        self.found = ", ".join(f"{k} fn_index {v}" for k, v in sorted(fns.items(), key=lambda kv: kv[1]))

    def _note(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _start(self, s: LiveSession) -> str:
        """start_recording, then the stream's first (good) chunk through /queue/join: its event id."""
        s.call("start_recording", ["default"])
        event = s.join("stream", [s.upload(self.files["live chunk.wav"]), None, "default", True])
        try:
            first = s.wait(event, self.SERVE_S)
        except LiveUnserved:
            self._note("live: stream not served in time")
            raise
        why = s.refusal(first)
        if why is not None:
            raise LiveRefused(f"a good first chunk was refused: {why or 'no message'}")
        return event

    def bad_chunk(self, name: str) -> str:
        self.discover()
        s = LiveSession(self.url, self.cookies, self.fns, self.mic)
        try:
            event = self._start(s)
            s.post_chunk(event, s.upload(self.files[name]))
            answer = s.wait(event, 60)
            why = s.refusal(answer)
            if why is None:  # taken as audio: the stream goes on; close it
                self._note("live: bad chunk accepted")
                s.close_stream(event)
            else:
                self._note("live: bad chunk refused with a message" if why and why != "None"
                           else "live: bad chunk refused WITHOUT a message")
            # the recording up to the bad chunk is stopped (kept and analysed) as the page would
            timed(self.stats, "hostile: live stop after a bad chunk",
                  lambda: s.call("stop_recording", [None, "default", True]), hostile=True)
        finally:
            s.walk_away()
        if why is None:
            return "accepted"
        raise LiveRefused(why or "refused with no message")

    def never_stopped(self, sessions: int = 3) -> str:
        """``sessions`` streams, one after the other, each started with three good chunks and then abandoned."""
        self.discover()
        for _ in range(sessions):
            s = LiveSession(self.url, self.cookies, self.fns, self.mic)
            try:
                event = self._start(s)
                for _ in range(2):
                    time.sleep(0.5)
                    s.post_chunk(event, s.upload(self.files["live chunk.wav"]))
                    why = s.refusal(s.wait(event, 60))
                    if why is not None:
                        raise LiveRefused(why or "refused with no message")
                self._note("live: streams left open (no close, no stop, connection dropped)")
            finally:
                s.walk_away()  # neither the stream's close nor stop_recording: the session is abandoned
        return "left open"


def hostile(url: str, files: dict, stop: threading.Event, stats: Stats, counts: dict, live_notes: dict):
    from gradio_client import Client, handle_file
    client = Client(url, auth=("mallory", PASSWORD), verbose=False)
    _code, cookies = login(url, "mallory", PASSWORD)
    live = LiveProbe(url, cookies, files, stats, live_notes)
    live_notes["probe"] = live
    cases = [
        ("multichannel ogg", lambda: client.predict(handle_file(str(files["multichannel.ogg"])), "default", 1.0,
                                                    api_name="/analyze")),
        ("multichannel ogg timeline", lambda: client.predict(handle_file(str(files["multichannel.ogg"])), "default",
                                                             api_name="/timeline")),
        ("0-byte audio", lambda: client.predict(handle_file(str(files["empty.wav"])), "default", 1.0,
                                                api_name="/analyze")),
        ("garbage audio", lambda: client.predict(handle_file(str(files["garbage.wav"])), "default", 1.0,
                                                 api_name="/analyze")),
        ("float wav 1e9", lambda: client.predict(handle_file(str(files["float.wav"])), "default", 1.0,
                                                 api_name="/analyze")),
        ("20 MB random upload", lambda: client.predict(handle_file(str(files["random20mb.bin"])), "default", 1.0,
                                                       api_name="/analyze")),
        ("10 MB name", lambda: client.predict("0" * 64, "angry", "x" * 10_000_000, api_name="/relabel")),
        ("/queue 10^9", lambda: client.predict(10 ** 9, "all", api_name="/queue")),
        ("alpha 'abc'", lambda: client.predict(handle_file(str(files["clips"][0])), "default", "abc",
                                               api_name="/analyze")),
        ("retrain", lambda: client.predict("default", api_name="/retrain")),
        ("retrain again", lambda: client.predict("default", api_name="/retrain")),
        ("file path /etc/passwd", lambda: raw_call(url, "analyze", [
            {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "default", 1.0, "difference", None, None,
            None], cookies)),
        ("live 0-byte chunk", lambda: live.bad_chunk("empty.wav")),
        ("live random-bytes chunk", lambda: live.bad_chunk("garbage.wav")),
        ("live float wav 1e9 chunk", lambda: live.bad_chunk("live float 1e9.wav")),
        ("live 60 s chunk (8 kHz)", lambda: live.bad_chunk("live 60 s.wav")),
        ("live 30 min chunk (8 kHz, 28.8 MB)", lambda: live.bad_chunk("live 30 min.wav")),
        ("live streams never stopped (3)", live.never_stopped),
    ]
    k = 0
    while not stop.is_set():
        name, fn = cases[k % len(cases)]
        k += 1
        counts[name] = counts.get(name, 0) + 1
        timed(stats, f"hostile: {name}", fn, hostile=True)
        time.sleep(0.2)


def guesser(url: str, stop: threading.Event, stats: Stats, guesses: dict):
    """Wrong passwords as fast as the server answers: a user name, then a spray over names."""
    k = 0
    while not stop.is_set():
        k += 1
        name = "alice" if k % 2 else f"spray{k}"
        code = timed(stats, "hostile: wrong password", lambda: login(url, name, f"guess{k}")[0], hostile=True)
        guesses["tried"] = guesses.get("tried", 0) + 1
        if code == 200:
            guesses["accepted"] = guesses.get("accepted", 0) + 1


# ----------------------------------------------------------------------------------------- main
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark's folder")
    ap.add_argument("--settle", type=float, default=75, help="seconds to wait after the load for the sweep")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="abuse-"))
    data, tmp, inputs = base / "data", base / "tmp", base / "inputs"
    tmp.mkdir(parents=True)
    print(f"preparing inputs in {base} ...", flush=True)
    files = make_inputs(inputs)
    print(f"  multichannel Ogg: {files['multichannel.ogg'].stat().st_size / 1e3:.0f} KB "
          "(32 ch x 192 kHz x 10 s: 245 MB as float32)", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    users = [f"user{i:02d}" for i in range(args.users)] + ["mallory"]
    env = dict(os.environ, SERDEMO_DATA=str(data), TMPDIR=str(tmp), GRADIO_SERVER_PORT=str(port),
               SERDEMO_AUTH=",".join(f"{u}:{PASSWORD}" for u in users), SERDEMO_SWEEP_S="10",
               SERDEMO_TEMP_MAX_AGE_S="60", PYTHONUNBUFFERED="1")
    env.pop("GRADIO_TEMP_DIR", None)
    gradio_dir = tmp / "serdemo-gradio"
    log_path = base / "server.log"
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.time()
    from gradio_client import Client, handle_file
    while True:
        if server.poll() is not None:
            raise SystemExit("server exited:\n" + log_path.read_text()[-3000:])
        try:
            warm = Client(url, auth=("mallory", PASSWORD), verbose=False)
            break
        except Exception:  # noqa: BLE001
            if time.time() - t0 > 300:
                server.kill()
                raise SystemExit("server did not come up in 300 s")
            time.sleep(1)
    warm.predict(handle_file(str(files["clips"][0])), "default", 1.0, api_name="/analyze")  # load the model
    warm_rss = rss_mb(server.pid)
    disk0 = {"store": du_mb(data), "serdemo temp": du_mb(tmp, "serdemo-") - du_mb(gradio_dir),
             "gradio cache": du_mb(gradio_dir)}
    print(f"server up in {time.time() - t0:.0f} s; warm RSS {warm_rss:.0f} MB; running {args.seconds:.0f} s with "
          f"{args.users} users + 1 hostile client ...", flush=True)

    stats, stop, sent, sent_lock, counts, live_notes = Stats(), threading.Event(), [], threading.Lock(), {}, {}
    peak = {"rss": warm_rss, "child": 0.0, "disk": dict(disk0)}

    def monitor():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], rss_mb(server.pid))
            peak["child"] = max(peak["child"], children_rss_mb(server.pid))
            now = {"store": du_mb(data), "serdemo temp": du_mb(tmp, "serdemo-") - du_mb(gradio_dir),
                   "gradio cache": du_mb(gradio_dir)}
            for k, v in now.items():
                peak["disk"][k] = max(peak["disk"][k], v)
            time.sleep(0.5)
    threads = [threading.Thread(target=monitor, daemon=True)]
    threads += [threading.Thread(target=ordinary_user, args=(i, url, files, stop, stats, sent, sent_lock), daemon=True)
                for i in range(args.users)]
    threads.append(threading.Thread(target=hostile, args=(url, files, stop, stats, counts, live_notes), daemon=True))
    guesses: dict = {}
    threads.append(threading.Thread(target=guesser, args=(url, stop, stats, guesses), daemon=True))
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads[1:]:
        t.join(timeout=300)
    try:
        warm.predict(api_name="/retrain_cancel")
    except Exception:  # noqa: BLE001
        pass
    end_rss = rss_mb(server.pid)
    print(f"load stopped; waiting {args.settle:.0f} s for the housekeeping sweep ...", flush=True)
    time.sleep(args.settle)
    settled_rss = rss_mb(server.pid)
    disk1 = {"store": du_mb(data), "serdemo temp": du_mb(tmp, "serdemo-") - du_mb(gradio_dir),
             "gradio cache": du_mb(gradio_dir)}
    alive = server.poll() is None
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()

    # labels: every acknowledged /relabel must be in the store, under its sender's login
    from serdemo.store import Store
    stored = Store(data).labels_since(0)
    by_key = defaultdict(int)
    for ev in stored:
        by_key[(ev.clip, ev.label, ev.annotator)] += 1
    lost = misattributed = 0
    remaining = dict(by_key)
    for clip, label, name in sent:
        if remaining.get((clip, label, name), 0) > 0:
            remaining[(clip, label, name)] -= 1
        elif any(k[0] == clip and k[1] == label and v > 0 for k, v in remaining.items()):
            misattributed += 1
        else:
            lost += 1
    wrong_names = sum(1 for ev in stored if ev.annotator not in users)

    server_log = log_path.read_text(errors="replace")
    tracebacks = server_log.count("Traceback")
    print("\n== per route (ordinary users) ==")
    print(f"{'route':<44}{'n':>6}{'p50 s':>9}{'p95 s':>9}{'errors':>8}")
    for route in sorted(stats.times):
        if route.startswith("hostile"):
            continue
        v = stats.times[route]
        print(f"{route:<44}{len(v):>6}{percentile(v, 50):>9.2f}{percentile(v, 95):>9.2f}{stats.errors[route]:>8}")
    print("\n== hostile client (a refusal is the expected answer) ==")
    print(f"{'case':<44}{'n':>6}{'p50 s':>9}{'p95 s':>9}{'refused':>8}")
    for route in sorted(stats.times):
        if not route.startswith("hostile"):
            continue
        v = stats.times[route]
        print(f"{route[9:]:<44}{len(v):>6}{percentile(v, 50):>9.2f}{percentile(v, 95):>9.2f}{stats.refused[route]:>8}")
    for route, samples in stats.samples.items():
        if stats.errors.get(route):
            print(f"  error sample {route}: {samples[0]}")
    probe = live_notes.get("probe")
    print(f"live microphone: private events (no API name), called as a page calls them, by the fn_index in /config "
          f"({probe.found if probe and probe.found else 'not found'}) through /gradio_api/queue/join, chunks posted "
          f"to /gradio_api/stream/{{event}}, answers read from /gradio_api/queue/data")
    for key in sorted(k for k in live_notes if k != "probe"):
        print(f"  {key}: {live_notes[key]}")
    for route in sorted(stats.samples):
        if route.startswith("hostile: live") and stats.refused.get(route):
            print(f"  {route[9:]} answer: {stats.samples[route][0]}")
    print("\n== server ==")
    print(f"alive at the end: {alive}; tracebacks in its log: {tracebacks}; log size {len(server_log) / 1e3:.0f} KB")
    print(f"RSS: warm {warm_rss:.0f} MB, peak {peak['rss']:.0f} MB, at the end of the load {end_rss:.0f} MB, "
          f"after {args.settle:.0f} s {settled_rss:.0f} MB (warm + {settled_rss - warm_rss:.0f} MB); "
          f"retraining process peak {peak['child']:.0f} MB")
    print("disk MB (start / peak / after the sweep):")
    for k in disk0:
        print(f"  {k:<14}{disk0[k]:>9.1f}{peak['disk'][k]:>9.1f}{disk1[k]:>9.1f}")
    print(f"\n== labels ==\nsent (acknowledged) {len(sent)}, stored {len(stored)}, lost {lost}, "
          f"misattributed {misattributed}, stored under a name no client logged in with {wrong_names}")
    print(f"wrong passwords tried in {args.seconds:.0f} s: {guesses.get('tried', 0)}, accepted "
          f"{guesses.get('accepted', 0)}")
    print(f"ordinary-user errors: {sum(stats.errors.values())}")
    if args.keep:
        print(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
