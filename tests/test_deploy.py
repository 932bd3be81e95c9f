"""Run the app the way a Space does (listening on 0.0.0.0, the port from $PORT), query it, put it
under a short concurrent load, and check the upload size limit."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import EMODB, ROOT, SR
from tests.test_app import analyze, free_port, launch_app

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    data = tmp_path_factory.mktemp("space-data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_SERVER", "SERDEMO_"))}
    env.update(GRADIO_SERVER_NAME="0.0.0.0", PORT=str(port), SERDEMO_DATA=str(data), SERDEMO_MAX_UPLOAD="5mb",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", SERDEMO_CONCURRENCY="2")
    url = f"http://127.0.0.1:{port}/"
    proc, client = launch_app(env, data, url)
    yield url, client, data
    proc.terminate()
    proc.wait(10)


def test_space_like_launch_serves(space):
    url, client, _ = space
    probs, *_ = analyze(client, EMODB / "wav" / "03a01Wa.wav")
    assert abs(sum(c["confidence"] for c in probs["confidences"]) - 1) < 1e-3


def test_upload_size_limit(space, tmp_path):
    url, client, _ = space
    big = tmp_path / "big.wav"
    import soundfile as sf

    sf.write(str(big), (0.1 * np.random.default_rng(0).standard_normal(SR * 100)).astype(np.float32), SR,
             subtype="FLOAT")  # 100 s of float samples: 6.4 MB, over the 5 MB limit
    with pytest.raises(Exception, match="(?i)size|large|413"):
        analyze(client, big)
    probs, *_ = analyze(client, EMODB / "wav" / "03a01Fa.wav")  # still serving
    assert probs["label"]


def test_short_mixed_load_has_no_errors(space):
    url, _, _ = space
    res = subprocess.run([sys.executable, "benchmarks/load.py", "--url", url, "--users", "1", "4", "--seconds", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [l.split() for l in res.stdout.splitlines()[1:] if l.strip()]
    assert [int(l[0]) for l in lines] == [1, 4]
    for l in lines:
        assert float(l[1]) > 0 and int(l[6]) == 0, res.stdout  # requests served, no errors
    print(res.stdout)
