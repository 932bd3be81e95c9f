"""Time a VTLP slider redraw of a 60 s clip: the old path (decode the stored clip, two full front-end
passes, figure) against the Workbench's cached power spectrum (warp + mel, figure). Both include
building the plotly figure and serialising it to JSON, as the server does.

    .venv/bin/python benchmarks/redraw.py [--seconds 60] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from serdemo.audio import load_audio  # noqa: E402
from serdemo.plots import analysis_figure  # noqa: E402
from serdemo.plots import db_per_unit, mel_band_hz  # noqa: E402
from serdemo.workbench import Settings, Workbench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EMODB = Path(os.environ.get("SERDEMO_SHARED_DATA", ROOT.parent / "shared" / "data")) / "emodb" / "wav"


def long_clip(seconds: float, path: Path) -> Path:
    """Real speech: EMO-DB utterances end to end until ``seconds``."""
    parts, total = [], 0
    for wav in sorted(EMODB.glob("*.wav")):
        x = load_audio(str(wav), target_rate=16000)
        parts.append(x)
        total += len(x)
        if total >= seconds * 16000:
            break
    sf.write(str(path), np.concatenate(parts)[: int(seconds * 16000)], 16000)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    bench = Workbench(Settings(data_dir=tmp / "data", max_duration_s=max(60.0, args.seconds)))
    clip = long_clip(args.seconds, tmp / "long.wav")
    t0 = time.perf_counter()
    a = bench.analyse(str(clip), "default", 1.1)
    a.figure.to_json()
    analyse_s = time.perf_counter() - t0
    p = bench.predictor("default")

    def old_path(alpha):  # what the slider did before: decode the stored clip, two front-end passes
        wave = p.load(str(bench.store.clip_path(a.clip_id)), max_duration_s=bench.settings.max_duration_s)
        front = getattr(p.frontend, "logmel", p.frontend)  # the log-mel module (inside the encoder's front end)
        with torch.inference_mode():
            x = torch.as_tensor(wave, device=p.device)[None]
            logmel, warped = (front(x, alpha=al)[0][0].float().cpu().numpy() for al in (None, alpha))
        view = bench._views[(a.clip_id, p.name)]
        fig = analysis_figure(p.features.frame_times_s(logmel.shape[1]), logmel, warped, view.attention_times_s,
                              view.attention, alpha, title=view.title, speech_segments_s=view.speech_segments_s,
                              band_hz=mel_band_hz(p.features), db_per_unit=db_per_unit(p.features))
        return fig.to_json()

    def new_path(alpha):
        return bench.redraw(alpha, a.clip_id, "default").figure.to_json()

    alphas = np.linspace(0.85, 1.15, args.repeats)
    for name, fn in (("before: decode + 2 front-end passes", old_path), ("after: cached power, warp + mel", new_path)):
        times = []
        for alpha in alphas:
            t = time.perf_counter()
            fn(float(alpha))
            times.append(time.perf_counter() - t)
        print(f"{args.seconds:.0f} s clip, redraw {name}: median {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={len(times)})")
    print(f"for scale: the whole analysis of the clip took {analyse_s * 1000:.0f} ms (first call, model load included)")


if __name__ == "__main__":
    main()
