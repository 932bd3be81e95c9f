import os
import shutil
import subprocess
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
