import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERDEMO_SHARED_DATA", ROOT.parent / "shared" / "data"))
EMODB = SHARED / "emodb"
RAVDESS = SHARED / "ravdess"
SR = 16000


def tone(freq_hz, duration_s=1.0, sr=SR, amp=0.5):
    t = np.arange(int(duration_s * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def harmonics(f0_hz=150.0, duration_s=1.0, sr=SR, formants=(700, 1200, 2600)):
    """A vowel-like signal: harmonics of f0 shaped by resonances at ``formants``."""
    t = np.arange(int(duration_s * sr)) / sr
    out = np.zeros_like(t)
    for k in range(1, int(sr / 2 / f0_hz)):
        f = k * f0_hz
        gain = sum(1.0 / (1 + ((f - fm) / 120.0) ** 2) for fm in formants) + 0.02
        out += gain * np.sin(2 * np.pi * f * t)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """Real synthetic speech from espeak-ng (22.05 kHz mono wav)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run([exe, "-w", str(path), "-s", "150",
                    "The quick brown fox jumps over the lazy dog, and then it rests."], check=True)
    return path


_TORCH_THREADS = []  # torch's thread count as the first test found it


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that runs a command's ``main`` in this process (``timeline_cli.main --jobs 1`` sets one torch thread
    per worker) must not leave every later test on one of the machine's cores."""
    torch = sys.modules.get("torch")
    if torch is not None and not _TORCH_THREADS:
        _TORCH_THREADS.append(torch.get_num_threads())
    yield
    torch = sys.modules.get("torch")
    if torch is not None and _TORCH_THREADS and torch.get_num_threads() != _TORCH_THREADS[0]:
        torch.set_num_threads(_TORCH_THREADS[0])


@pytest.fixture(scope="session")
def wave_cache(tmp_path_factory) -> Path:
    """One decoded-wave cache (``--cache-dir``: waves and their speech masks) for the session's training runs
    that only read it. Its keys hold the file (path, size, mtime), the decode settings and how each mask was
    made, so a run never reads another run's entry for something else; tests of the cache itself keep their own."""
    return tmp_path_factory.mktemp("waves")


def shared_clip(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared corpus file not found: {path}")
    return path


@pytest.fixture(scope="session")
def emodb_clip() -> Path:
    return shared_clip(EMODB / "wav" / "03a01Fa.wav")


@pytest.fixture(scope="session")
def ravdess_clip() -> Path:
    return shared_clip(RAVDESS / "Actor_01" / "03-01-05-01-01-01-01.flac")


def write(path, data, sr=SR, **kw):
    sf.write(str(path), data, sr, **kw)
    return path


# ------------------------------------------------------------------ the launched app and the browser, once a session
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(env: dict, data: Path, url: str, wait_s: float = 120, cwd: Path = ROOT, auth=None):
    """Start ``python app.py`` with ``env`` (log in ``data/server.log``); return it and a connected client
    (logged in as ``auth``, a (name, password) pair, when given)."""
    from gradio_client import Client

    log = open(data / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("app exited: " + (data / "server.log").read_text()[-2000:])
        try:
            return proc, Client(url, auth=auth, verbose=False)
        except Exception:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"app did not come up in {wait_s:.0f} s")


BROKEN = {  # checkpoint folders beside the good ones whose cards would crash start-up or escape their folder
    "broken-version": lambda c: c.update(format_version="1"),
    "broken-heads": lambda c: c.update(heads=["neutral", "happy"]),
    "broken-hop": lambda c: c["features"].update(hop_length=0),
    "broken-escape": lambda c: c["weights"].update(file="../../checkpoints/default/model.safetensors"),
    "broken-unhashed": lambda c: c["weights"].pop("sha256"),
}


@contextlib.contextmanager
def live_probe_server(tmp_path: Path, monkeypatch, serve_s: float):
    """The app in this process (with the stream-chunk middleware app.py adds) and benchmarks/abuse.py's raw-HTTP
    live client pointed at it, as a page speaks to the live stream: yields ``(abuse module, LiveProbe)`` whose
    ``_start`` gives up after ``serve_s``; the app is closed afterwards. Patch the live limits before entering."""
    import dataclasses
    import importlib.util

    from starlette.middleware import Middleware

    from serdemo.ui import Settings, build_app
    from serdemo.uikit import StreamChunkMiddleware

    spec = importlib.util.spec_from_file_location("abuse", ROOT / "benchmarks" / "abuse.py")
    abuse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(abuse)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-cache"))
    app = build_app(dataclasses.replace(Settings.from_env(), data_dir=tmp_path / "data",
                                        checkpoint_dirs=(ROOT / "checkpoints",)))
    app.queue(default_concurrency_limit=2)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               app_kwargs={"middleware": [Middleware(StreamChunkMiddleware)]})
    chunk = tmp_path / "chunk.wav"
    sf.write(chunk, (np.sin(np.arange(24000) / 48000 * 2 * np.pi * 220) * 3000).astype(np.int16), 48000)
    try:
        probe = abuse.LiveProbe(f"http://127.0.0.1:{port}", "", {"live chunk.wav": chunk}, abuse.Stats(), {})
        probe.SERVE_S = serve_s
        probe.discover()
        yield abuse, probe
    finally:
        app.close()


def broken_checkpoints(good: Path, folder: Path) -> None:
    for name, change in BROKEN.items():
        shutil.copytree(good, folder / name)
        card = json.loads((folder / name / "card.json").read_text())
        change(card)
        (folder / name / "card.json").write_text(json.dumps(card))


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``python app.py`` launched once for every module that talks to an ordinary app (test_app, test_browser,
    test_browser_timeline, test_fuzz): the shipped checkpoints, five broken ones beside them, a fresh store, a
    small retraining recipe. Tests that need other settings launch their own. Tests share its store: each
    labels under its own annotator name and reads back what it wrote."""
    ckpts = Path(os.environ.get("SERDEMO_CHECKPOINTS", ROOT / "checkpoints"))
    if not (ckpts / "default" / "card.json").is_file():
        pytest.fail(f"the shipped default checkpoint is missing from {ckpts}")
    data = tmp_path_factory.mktemp("data")
    extra = tmp_path_factory.mktemp("extra")
    broken_checkpoints(ckpts / "default", extra)
    port = free_port()
    env = dict(os.environ, SERDEMO_CHECKPOINTS=str(ckpts), SERDEMO_DATA=str(data), SERDEMO_EXTRA_CHECKPOINTS=str(extra),
               GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               SERDEMO_MAX_DURATION_S="30", SERDEMO_RETRAIN_EPOCHS="1",
               SERDEMO_RETRAIN_ARGS="--limit-per-corpus 24 --max-steps 2 --batch-size 8", TQDM_DISABLE="1")
    url = f"http://127.0.0.1:{port}/"
    proc, client = launch_app(env, data, url)
    yield {"ckpts": ckpts, "client": client, "url": url, "data": data, "extra": extra, "proc": proc}
    proc.terminate()
    proc.wait(10)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_SHOTS = ROOT / "artifacts" / "screenshots"  # ignored by git
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def chromium():
    """One Playwright and one plain headless Chromium (Debian's) per module; tests open their own contexts in
    it, and a browser of their own only for other flags (a fake microphone's file). Not one per session:
    Playwright's sync API keeps an event loop running in this thread, and later tests call asyncio.run()."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (setup.sh installs it as root)")
    from playwright.sync_api import sync_playwright

    BROWSER_SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS)
        yield pw, browser
        browser.close()


@pytest.fixture
def browser_factory(chromium):
    """``make(extra_flags=(), viewport=None)`` -> a new page in its own context: in the session's browser, or
    with extra flags (a fake microphone) in a browser of its own. Everything it opened is closed after the test."""
    pw, shared = chromium
    opened, contexts = [], []

    def make(extra_flags=(), viewport=None):
        b = shared
        if extra_flags:
            b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*BROWSER_FLAGS, *extra_flags])
            opened.append(b)
        ctx = b.new_context(viewport=viewport or {"width": 1400, "height": 1800}, accept_downloads=True)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()
    for b in opened:
        b.close()
