"""Issue 16, the public-server limits: logins, the disk budget, live sessions, log volume, who may retrain.

Each test uses real hostile input made here (wrong passwords at speed, real files on disk with real ages,
a file path outside the allowed folders in a request, chunks that are not audio)."""

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT


# ------------------------------------------------------------------------------------------- logins
class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_wrong_passwords_are_slowed_and_the_name_locked():
    from serdemo.uikit import LoginGuard
    clock = FakeClock()
    guard = LoginGuard({"alice": "s3cret", "bob": "pw"}, max_failures=5, lockout_s=300, delay_s=0.5,
                       max_delay_s=8, clock=clock, sleep=clock.sleep)
    check = lambda u, p: asyncio.run(guard.check(u, p))  # noqa: E731
    assert check("alice", "s3cret")
    assert clock.slept == []  # a right password is not delayed
    start = clock.now
    results = [check("alice", f"guess{i}") for i in range(200)]
    assert not any(results)
    # 200 guesses took at least 0.5+1+2+4 + 196*8 s of answers (the issue: 200 in 0.7 s)
    assert clock.now - start >= 7.5 + 196 * 8 - 1e-6
    assert clock.slept[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert guard.locked_for("alice") > 0
    assert not check("alice", "s3cret")  # locked: even the right password is refused
    assert check("bob", "pw")  # another name is not locked by alice's failures
    clock.now += 301
    assert check("alice", "s3cret")  # the lockout ends; the failures are forgotten on success
    assert guard.locked_for("alice") == 0
    assert not check("alice", "x" * 10_000_000)  # a 10 MB password is a wrong one, nothing more
    assert not check("nobody", "pw")
    assert not check("alice" + "x" * 300, "s3cret")  # a name cut to its first 256 characters is not alice
    assert guard.locked_for("c:127.0.0.1") == 0  # a name cannot lock a client address


def test_a_spray_over_many_names_slows_everyone():
    from serdemo.uikit import LoginGuard
    clock = FakeClock()
    guard = LoginGuard({"alice": "s3cret"}, delay_s=0.5, max_delay_s=8, global_per_min=30, clock=clock,
                       sleep=lambda s: clock.sleep(0))  # time stands still: all within one minute
    for i in range(40):
        asyncio.run(guard.check(f"user{i}", "pw"))
    clock.slept.clear()
    timed = FakeClock()
    guard.sleep = timed.sleep
    assert not asyncio.run(guard.check("user999", "pw"))
    assert sum(timed.slept) >= 8.0  # a first failure of a new name waits the longest delay during a spray
    assert len(guard._failures) <= 10_000


def test_login_page_uses_the_guard(tmp_path):
    """Through Gradio's /login: the guard is an async callable, so a delay does not block the server; the
    sixth attempt (right password) of a locked name is refused; a client spraying wrong passwords over
    many names is locked itself (its address comes from the middleware app.py installs)."""
    import gradio as gr
    from starlette.middleware import Middleware

    from serdemo.uikit import LoginClientMiddleware, LoginGuard
    guard = LoginGuard({"alice": "s3cret", "bob": "pw"}, max_failures=5, delay_s=0.05, max_delay_s=0.2,
                       max_client_failures=12)
    with gr.Blocks() as demo:
        gr.Markdown("hi")
    demo.launch(auth=guard.check, prevent_thread_lock=True, server_port=None, quiet=True,
                app_kwargs={"middleware": [Middleware(LoginClientMiddleware)]})
    try:
        url = demo.local_url.rstrip("/")

        def login(user, pw):
            data = urllib.parse.urlencode({"username": user, "password": pw}).encode()
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{url}/login", data=data), timeout=30) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code
        t0 = time.time()
        codes = [login("alice", f"wrong{i}") for i in range(5)]
        assert all(c >= 400 for c in codes)
        assert time.time() - t0 >= 0.05 + 0.1 + 0.2 + 0.2 + 0.2 - 0.01
        assert login("alice", "s3cret") >= 400  # locked
        assert guard.refused >= 6
        assert guard.client_locked_for("127.0.0.1") == 0
        for i in range(6):  # a spray: one wrong password each for new names, from the same address
            assert login(f"spray{i}", "pw") >= 400
        assert guard.client_locked_for("127.0.0.1") > 0
        assert login("bob", "pw") >= 400  # bob's name is not locked, but this client is
        assert guard.locked_for("bob") == 0
    finally:
        demo.close()


# ------------------------------------------------------------------------------------------- disk
def _make(path: Path, size: int, age_s: float, now: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    os.utime(path, (now - age_s, now - age_s))
    if path.parent.name != path.parent.parent.name:
        os.utime(path.parent, (now - age_s, now - age_s))
    return path


def test_sweep_enforces_age_and_budget_on_real_files(tmp_path):
    from serdemo.housekeeping import sweep
    now = time.time()
    cache, work = tmp_path / "gradio", tmp_path / "tmp"
    cache.mkdir()
    work.mkdir()
    old_upload = _make(cache / ("a" * 64) / "upload.bin", 3_000_000, 7200, now)  # two hours old
    mid_uploads = [_make(cache / f"m{i}" / "up.bin", 2_000_000, 1000 + 100 * i, now) for i in range(5)]
    fresh_upload = _make(cache / "fresh" / "up.bin", 4_000_000, 10, now)  # a request may be reading it
    live_old = _make(work / "serdemo-live-abc" / "recording.wav", 1_000_000, 4000, now)
    live_new = _make(work / "serdemo-live-def" / "recording.wav", 1_000_000, 500, now)
    tl_export = _make(work / "serdemo-export-timeline-x" / "t.zip", 1_000_000, 5000, now)
    theirs = _make(work / "someone-else" / "keep.bin", 5_000_000, 90_000, now)  # not ours: never touched
    budget = 9_000_000
    report = sweep(cache, work, budget=budget, max_age_s=3600, min_age_s=120, now=now)
    assert not old_upload.exists() and not live_old.exists() and not tl_export.exists()
    assert fresh_upload.exists() and theirs.exists()
    remaining = sum(p.exists() for p in mid_uploads)
    used = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) + \
        sum(f.stat().st_size for d in work.glob("serdemo-*") for f in d.rglob("*") if f.is_file())
    assert used <= budget, used
    assert report.used_bytes == used
    assert remaining == 2 and live_new.exists()  # 15 MB left after the age rule: the 3 oldest go
    # the oldest went first: every remaining mid upload is younger than every removed one
    ages = [(1000 + 100 * i, p.exists()) for i, p in enumerate(mid_uploads)]
    kept_ages = [a for a, e in ages if e]
    gone_ages = [a for a, e in ages if not e]
    assert gone_ages and (not kept_ages or max(kept_ages) < min(gone_ages))


def test_remove_old_exports_takes_a_prefix_of_ours_only(tmp_path):
    from serdemo.export import remove_old_exports
    now = time.time()
    live = _make(tmp_path / "serdemo-live-1" / "r.wav", 10, 7200, now)
    export = _make(tmp_path / "serdemo-export-1" / "e.zip", 10, 7200, now)
    assert remove_old_exports(tmp_path, 3600, now=now, prefix="serdemo-live-") == 1
    assert not live.exists() and export.exists()
    for bad in ("", "*", "../", "serdemo-live-/../x", "tmp"):
        with pytest.raises(ValueError):
            remove_old_exports(tmp_path, 3600, now=now, prefix=bad)


def test_old_retraining_runs_are_pruned_but_not_the_running_one(tmp_path):
    from serdemo.retrain import Retrainer
    out, work = tmp_path / "checkpoints", tmp_path / "retrain"
    work.mkdir()
    now = time.time()
    names = [f"default-ft-2026010{i}-000000" for i in range(6)]
    for i, name in enumerate(names):
        _make(out / name / "model.safetensors", 100_000, 6000 - 1000 * i, now)
        (work / f"{name}.log").write_text("log")
        (work / f"{name}.json").write_text("{}")
    (out / "default").mkdir()  # a checkpoint that is not a run: never pruned
    r = Retrainer(work, out, [], verify=None)
    assert r.prune(keep=3) == 3
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(["default", *names[3:]])
    assert not (work / f"{names[0]}.log").exists() and (work / f"{names[5]}.log").exists()


def test_app_puts_gradios_upload_cache_in_a_folder_it_sweeps(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env["TMPDIR"] = str(tmp_path)
    code = ("import app, os, gradio.utils as u; from serdemo.housekeeping import gradio_cache_dir; "
            "print(os.environ['GRADIO_TEMP_DIR']); print(u.get_upload_folder()); print(gradio_cache_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    assert lines[0] == str(tmp_path / "serdemo-gradio")
    assert Path(lines[1]).resolve() == Path(lines[2]).resolve() == (tmp_path / "serdemo-gradio").resolve()


# ------------------------------------------------------------------------------------------- live
class NoModel:
    """A predictor that must not be reached: the chunks here are silence or refused before classifying. (It
    says it does not adapt to a voice: a live session asks that when it starts.)"""

    adapts = False

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name})")


@pytest.fixture
def fresh_sessions():
    gc.collect()
    from serdemo import live
    for s in list(live._sessions):
        s.release("test")
    yield live


def test_an_idle_live_stream_is_closed_and_its_audio_released(fresh_sessions):
    from serdemo.audio import AudioError
    live = fresh_sessions
    clock = FakeClock()
    t = live.LiveTimeline(NoModel(), clock=clock, idle_s=60)
    for _ in range(20):
        assert t.feed(8000, np.zeros(4000, np.int16)) is None  # 0.5 s of silence
        clock.now += 0.5
    assert t.samples > 0
    clock.now += 61
    assert live.release_idle(clock.now) == 1
    assert t.samples == 0 and t.parts == [] and t.released == "idle"
    with pytest.raises(AudioError, match="closed"):
        t.feed(8000, np.zeros(4000, np.int16))


def test_a_live_stream_that_never_stops_ends_at_its_lifetime(fresh_sessions):
    from serdemo.audio import AudioError
    live = fresh_sessions
    clock = FakeClock()
    t = live.LiveTimeline(NoModel(), clock=clock, max_duration_s=10, idle_s=60)
    with pytest.raises(AudioError, match="limit"):
        for _ in range(1000):  # half a second of silence every half second: never idle, never stopping
            t.feed(8000, np.zeros(4000, np.int16))
            clock.now += 0.5
    assert clock.now - t.created_at <= 10 + live.LIVE_EXTRA_S + 1
    assert t.parts == []


def test_concurrent_live_sessions_are_capped(fresh_sessions):
    from serdemo.audio import AudioError
    live = fresh_sessions
    clock = FakeClock()
    held = [live.LiveTimeline(NoModel(), clock=clock, max_sessions=3) for _ in range(3)]
    with pytest.raises(AudioError, match="live places on the server are taken"):
        live.LiveTimeline(NoModel(), clock=clock, max_sessions=3)
    held[0].finish()  # a stopped recording frees its place at once
    extra = live.LiveTimeline(NoModel(), clock=clock, max_sessions=3)
    with pytest.raises(AudioError, match="live places on the server are taken"):
        live.LiveTimeline(NoModel(), clock=clock, max_sessions=3)
    clock.now += 61
    assert live.release_idle(clock.now) == 3
    assert live.LiveTimeline(NoModel(), clock=clock, max_sessions=3).open_at()
    del held, extra


def test_every_bad_chunk_gets_a_message(fresh_sessions):
    from serdemo.audio import AudioError
    live = fresh_sessions
    t = live.LiveTimeline(NoModel())
    bad = [(8000, np.array(["a", "b"])), (8000, np.zeros((2, 2, 2), np.int16)), ("fast", np.zeros(10, np.int16)),
           (8000, np.zeros(8000 * 60, np.int16)), (8000, [object()]), (8000, np.zeros(10, np.complex64))]
    for rate, chunk in bad:
        with pytest.raises(AudioError) as info:
            t.feed(rate, chunk)
        assert "/" not in str(info.value) and "Traceback" not in str(info.value)


# ------------------------------------------------------------------------------------------- log volume
def _post_refused_path(url: str, data=None) -> None:
    from tests.test_app import raw_call

    data = [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 1.0] if data is None else data
    assert "error" in raw_call(url, "echo", data)


def test_a_refused_file_path_logs_one_short_line(capfd):
    import gradio as gr

    from serdemo.uikit import quiet_refused_paths
    with gr.Blocks() as demo:
        audio = gr.Audio(type="filepath")
        alpha = gr.Slider(0.8, 1.2, value=1.0)
        out = gr.Textbox()
        audio.change(lambda a, x: str(a), [audio, alpha], out, api_name="echo")
    demo.queue().launch(prevent_thread_lock=True, quiet=True)
    try:
        url = demo.local_url.rstrip("/")
        capfd.readouterr()
        _post_refused_path(url)
        time.sleep(0.5)
        before = capfd.readouterr()
        loud = len(before.out.encode()) + len(before.err.encode())
        assert loud > 1000 and "InvalidPathError" in before.err  # what Gradio does on its own
        quiet_refused_paths()
        for _ in range(20):
            _post_refused_path(url)
        _post_refused_path(url, [None, "abc"])  # a word for the slider
        _post_refused_path(url, [None])  # too few inputs
        time.sleep(0.5)
        after = capfd.readouterr()
        logged = len(after.out.encode()) + len(after.err.encode())
        assert "Traceback" not in after.err and "/etc/passwd" not in after.err + after.out
        assert logged <= 22 * 120, logged  # at most one short line each
    finally:
        demo.close()


# ------------------------------------------------------------------------------------------- retraining
def test_retraining_needs_a_login_when_logins_are_configured():
    from serdemo.retrain import RetrainRefused, auth_configured, check_may_retrain
    with_auth = {"SERDEMO_AUTH": "alice:pw,bob:pw2"}
    assert auth_configured(with_auth) and not auth_configured({}) and not auth_configured({"SERDEMO_AUTH": ""})
    for nobody in (None, "", "   "):
        with pytest.raises(RetrainRefused, match="login"):
            check_may_retrain(nobody, with_auth)
        check_may_retrain(nobody, {})  # no logins configured: anyone (cool-down and quota still hold)
    check_may_retrain("alice", with_auth)


def test_require_retrain_login_refuses_an_anonymous_request(monkeypatch):
    import gradio as gr

    from serdemo.uikit import require_retrain_login

    class Req:
        def __init__(self, username):
            self.username = username
            self.session = {}
    monkeypatch.setenv("SERDEMO_AUTH", "alice:pw")
    with pytest.raises(gr.Error) as info:
        require_retrain_login(Req(None))
    assert "login" in info.value.message
    with pytest.raises(gr.Error):
        require_retrain_login(None)
    require_retrain_login(Req("alice"))
    monkeypatch.delenv("SERDEMO_AUTH")
    require_retrain_login(Req(None))


def test_the_client_address_behind_a_proxy_is_the_entry_the_proxy_added():
    from serdemo.uikit import client_address
    scope = {"client": ("10.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7")]}
    assert client_address(scope) == "10.0.0.1"  # not trusted: the socket's peer
    assert client_address(scope, trust_forwarded=True) == "203.0.113.7"  # the client's own entries ignored
    assert client_address({"client": None, "headers": []}) is None


# ------------------------------------------------------------------------------------------- live chunks
def test_every_streamed_chunk_is_recorded_on_its_way_in_and_the_record_is_bounded(tmp_path, monkeypatch):
    """Issue 17 point 9: Gradio keeps only the latest chunk of a stream while its handler runs (the browser sends
    one every 0.1 s). The middleware records each post's file, in order, before Gradio sees the request, and
    passes the request on unchanged; the record is bounded, and a handler takes only files in Gradio's upload
    folder (a client naming /etc/passwd gets nothing read)."""
    import asyncio
    from types import SimpleNamespace

    from serdemo.uikit import StreamChunkMiddleware, StreamedChunks, streamed_files

    chunks, seen = StreamedChunks(max_sessions=2, max_pending=3), []

    async def app(scope, receive, send):  # what Gradio's route receives
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        seen.append(body)

    def post(path, body, parts=2):
        step = max(1, len(body) // parts)
        pieces = [body[i:i + step] for i in range(0, len(body), step)]
        messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

        async def receive():
            return messages.pop(0)
        scope = {"type": "http", "method": "POST", "path": path}
        asyncio.run(StreamChunkMiddleware(app, chunks)(scope, receive, None))

    def chunk_post(session, path):
        return json.dumps({"fn_index": 3, "data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, None, "default"],
                          "event_data": None, "session_hash": session}).encode()

    upload = tmp_path / "gradio"
    files = []
    for i in range(5):
        (upload / f"h{i}").mkdir(parents=True)
        files.append(str(upload / f"h{i}" / "audio.wav"))
        Path(files[-1]).write_bytes(b"RIFF")
    for f in files[:2]:
        post("/gradio_api/stream/ev1", chunk_post("alice", f))
    assert seen == [chunk_post("alice", files[0]), chunk_post("alice", files[1])]  # passed on unchanged
    post("/gradio_api/stream/ev1/close", b"{}")
    post("/gradio_api/queue/join", chunk_post("alice", files[2]))  # not a stream's chunk route
    assert chunks.take("alice") == files[:2] and chunks.take("alice") == [] and chunks.take("bob") is None
    for f in files:  # at most 3 waiting: the oldest go
        post("/gradio_api/stream/ev1", chunk_post("alice", f))
    assert chunks.take("alice") == files[2:]
    for who in ("bob", "carol"):  # at most 2 sessions: the least recently posting goes
        post("/gradio_api/stream/ev2", chunk_post(who, files[0]))
    assert chunks.take("alice") is None and chunks.take("carol") == files[:1]
    post("/gradio_api/stream/ev3", b"x" * 200_000)  # too large to be a chunk's post: passed on, not read
    post("/gradio_api/stream/ev3", b"not json")
    assert len(seen[-2]) == 200_000 and chunks.take("dave") is None
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(upload))
    chunks = StreamedChunks()
    monkeypatch.setattr("serdemo.uikit.STREAMED", chunks)
    for f in (files[0], "/etc/passwd", str(upload / "h1" / ".." / ".." / "x.wav"), files[1]):
        post("/gradio_api/stream/ev4", chunk_post("erin", f))
    assert streamed_files(SimpleNamespace(session_hash="erin")) == [files[0], files[1]]
    assert streamed_files(SimpleNamespace(session_hash="nobody")) is None and streamed_files(None) is None


def test_an_abandoned_live_stream_frees_its_place_when_its_recording_is_released(tmp_path, monkeypatch):
    """Issue 16 point 5, found by the abuse run's live cases: Gradio keeps a stream's place in its concurrency
    limit while it waits for the next chunk, up to the stream's time limit (30 min), so a client that opened
    the limit's number of streams and walked away shut the microphone for everyone. A released recording
    (idle, here forced) now ends its stream at once: the next page's stream is served."""
    from serdemo import live as live_mod
    from serdemo import timeline_ui
    from tests.conftest import live_probe_server

    monkeypatch.setattr(timeline_ui, "LIVE_CHUNKS_AT_ONCE", 1)  # one stream at a time: one walk-away fills it
    with live_probe_server(tmp_path, monkeypatch, serve_s=20.0) as (abuse, probe):
        first = abuse.LiveSession(probe.url, "", probe.fns, probe.mic)
        probe._start(first)
        first.walk_away()  # no close, no stop: its stream holds the one place
        time.sleep(1.0)
        assert live_mod.release_idle(time.monotonic() + 3600) >= 1  # the sweeper, an hour later
        second = abuse.LiveSession(probe.url, "", probe.fns, probe.mic)
        try:
            probe._start(second)  # served: raises LiveUnserved after 20 s while the first stream holds the place
        finally:
            second.walk_away()
