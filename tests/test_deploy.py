"""Run the app the way a Space does (listening on 0.0.0.0, the port from $PORT), query it, put it
under a short concurrent load, and check the upload size limit."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EMODB, ROOT, SR
from tests.test_app import analyze, free_port, launch_app

pytestmark = pytest.mark.timeout(600)


# ------------------------------------------------------------------ deployable as pushed (issue 10, point 13)
SHIPPED = ("app.py", "serdemo", "checkpoints", "requirements.txt", "packages.txt", "README.md", "Spaces.md")


def tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The repository as a Space checks it out (read-only), started with no settings but the store's
    volume and an upload limit (5 MB, for test_upload_size_limit): the port from $PORT, listening on 0.0.0.0.
    Every test of a Space-like launch uses this one server (there were two, one on a writable checkout)."""
    checkout = tmp_path_factory.mktemp("checkout")
    for name in SHIPPED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, checkout / name)
    for p in [checkout, *checkout.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    volume = tmp_path_factory.mktemp("volume")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "SERDEMO_"))}
    env.update(GRADIO_SERVER_NAME="0.0.0.0", PORT=str(port), SERDEMO_DATA=str(volume), PYTHONDONTWRITEBYTECODE="1",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", SERDEMO_MAX_UPLOAD="5mb")
    before = tree(checkout)
    url = f"http://127.0.0.1:{port}/"
    proc, client = launch_app(env, volume, url, cwd=checkout)
    yield {"url": url, "client": client, "checkout": checkout, "volume": volume, "before": before}
    proc.terminate()
    proc.wait(10)
    for p in [checkout, *checkout.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)


def test_space_like_launch_serves(space):
    client = space["client"]
    probs, *_ = analyze(client, EMODB / "wav" / "03a01Wa.wav")
    assert abs(sum(c["confidence"] for c in probs["confidences"]) - 1) < 1e-3


def test_upload_size_limit(space, tmp_path):
    client = space["client"]
    big = tmp_path / "big.wav"
    import soundfile as sf

    sf.write(str(big), (0.1 * np.random.default_rng(0).standard_normal(SR * 100)).astype(np.float32), SR,
             subtype="FLOAT")  # 100 s of float samples: 6.4 MB, over the 5 MB limit
    with pytest.raises(Exception, match="(?i)size|large|413"):
        analyze(client, big)
    probs, *_ = analyze(client, EMODB / "wav" / "03a01Fa.wav")  # still serving
    assert probs["label"]


def test_short_mixed_load_has_no_errors(space):
    """benchmarks/load.py against the Space-like server: analyses, relabels and hostile uploads from four
    users; no server error, and every saved label is in the store on its clip."""
    res = subprocess.run([sys.executable, "benchmarks/load.py", "--url", space["url"], "--data-dir", str(space["volume"]),
                          "--users", "4", "--seconds", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "server errors 0" in res.stdout and "lost 0, unexpected 0, on the wrong clip 0" in res.stdout, res.stdout
    print(res.stdout)


def test_a_read_only_checkout_serves_with_the_store_on_its_volume(space):
    client, checkout, volume, before = space["client"], space["checkout"], space["volume"], space["before"]
    probs, _, _, _, clip_id, _, _ = analyze(client, EMODB / "wav" / "03a01Wa.wav")
    status, _ = client.predict(clip_id, "angry", "space-user", api_name="/relabel")
    assert "space-user" in status
    archive = client.predict("audiofolder", api_name="/export")
    assert archive.endswith(".zip")
    assert (volume / "store.sqlite3").is_file() and list((volume / "audio").rglob(f"{clip_id}.wav"))
    assert tree(checkout) == before  # nothing written into the checkout


def test_readme_front_matter_configures_the_space():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    front = dict(line.split(": ", 1) for line in text.split("---\n")[1].strip().splitlines()
                 if ": " in line and not line.startswith("#"))
    front = {k.strip(): v.split("#")[0].strip().strip('"') for k, v in front.items()}
    gradio_pin = next(r.split("==")[1] for r in (ROOT / "requirements.txt").read_text().split() if r.startswith("gradio=="))
    assert (front["sdk"], front["sdk_version"], front["app_file"], front["python_version"]) == \
        ("gradio", gradio_pin, "app.py", "3.11")
    assert front["title"] and front["license"]
    assert "\n# serdemo" in text.split("---\n", 2)[2][:200]  # the README's own title follows at once
    spaces = (ROOT / "Spaces.md").read_text()
    for part in ("/data", "SERDEMO_DATA", "SERDEMO_AUTH", "ZeroGPU", "spaces.GPU", "hardware"):
        assert part in spaces, part


def test_the_store_goes_to_persistent_storage_on_a_space(tmp_path, monkeypatch):
    from serdemo import store, workbench

    monkeypatch.delenv("SERDEMO_DATA", raising=False)
    monkeypatch.setattr(store, "SPACES_STORAGE", tmp_path / "data")
    assert workbench.Settings.from_env().data_dir == Path("data")  # no persistent storage: the checkout's ./data
    (tmp_path / "data").mkdir()
    assert workbench.Settings.from_env().data_dir == tmp_path / "data" / "serdemo"
    # one answer: a Store opened without a folder lands where the app's does (it once ignored /data)
    assert store.Store().directory == tmp_path / "data" / "serdemo"
    monkeypatch.setenv("SERDEMO_DATA", str(tmp_path / "mine"))
    assert workbench.Settings.from_env().data_dir == tmp_path / "mine"


def test_a_login_name_is_the_annotator(tmp_path):
    """With SERDEMO_AUTH the page asks for a login, and labels are saved under the login name whatever
    the name field says."""
    from gradio_client import Client

    from serdemo.store import Store

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "SERDEMO_"))}
    env.update(GRADIO_SERVER_PORT=str(port), SERDEMO_DATA=str(tmp_path), SERDEMO_AUTH="alice:pw1,bob:pw2",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    url = f"http://127.0.0.1:{port}/"
    proc, client = launch_app(env, tmp_path, url, auth=("alice", "pw1"))
    try:
        clip_id = analyze(client, EMODB / "wav" / "03a01Fa.wav")[4]
        status, _ = client.predict(clip_id, "happy", "someone-else", api_name="/relabel")
        assert "by alice" in status
        assert [h.annotator for h in Store(tmp_path).history(clip_id)] == ["alice"]
        with pytest.raises(Exception):
            Client(url, auth=("alice", "wrong"), verbose=False)
    finally:
        proc.terminate()
        proc.wait(10)
