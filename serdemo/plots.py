"""Plotly figures. They take arrays and times, never models.

Spectrogram panels are drawn in dB relative to the clip's loudest mel bin (0 dB at the top of the
colour bar), with each mel band placed at its centre frequency in Hz, so the axis reads like Praat's.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from serdemo.vtlp import F_HI_HZ, warp_frequency

FIGURE_HEIGHT = 680
PALETTE = "Viridis"
# a short toolbar (zoom, pan, reset, save as PNG) that fits beside the figure's title on a phone
MODEBAR = dict(remove=["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"], bgcolor="rgba(255,255,255,0.8)")
MAX_COLUMNS = 2000  # time columns drawn per panel (see decimate)
DIVERGING = "RdBu_r"  # warped - original: red where VTLP adds energy, blue where it removes it
DB_PER_NEPER = 10.0 / math.log(10.0)  # natural-log power -> dB
VTLP_VIEWS = ("difference", "warped")  # what the VTLP panel shows
SPEC_HOVER = "%{x:.2f} s · %{y:.0f} Hz · %{z:.1f} dB<extra></extra>"
DIFF_HOVER = "%{x:.2f} s · %{y:.0f} Hz · Δ %{z:.1f} dB<extra></extra>"


def to_db(logmel: np.ndarray, reference: float | None = None, db_per_unit: float = DB_PER_NEPER) -> np.ndarray:
    """Log mel power -> dB below ``reference`` (the clip's peak when None). ``db_per_unit``: dB per unit
    of the log scale (natural log: 4.34; Whisper's (log10 + 4) / 4: 40)."""
    logmel = np.asarray(logmel, dtype=np.float32)
    ref = float(np.max(logmel)) if reference is None else reference
    return (logmel - ref) * db_per_unit


def warp_breakpoint_hz(alpha: float, f_hi_hz: float = F_HI_HZ) -> float:
    """Where the piecewise-linear warp bends, on the warped frequency axis (Hz)."""
    return f_hi_hz * min(alpha, 1.0)


def _colorbar(fig: go.Figure, row: int, title: str) -> dict:
    """A thin colour bar beside subplot ``row`` (spanning that row only)."""
    axis = fig.layout["yaxis" if row == 1 else f"yaxis{row}"]
    lo, hi = axis.domain
    return dict(title=dict(text=title, side="right"), thickness=10, len=hi - lo, y=(lo + hi) / 2,
                yanchor="middle", x=1.0, xpad=4, outlinewidth=0)


def analysis_figure(frame_times_s: np.ndarray, logmel: np.ndarray, logmel_warped: np.ndarray | None,
                    attention_times_s: np.ndarray, attention: np.ndarray, alpha: float,
                    title: str = "", speech_segments_s: list[tuple[float, float]] | None = None,
                    band_hz: np.ndarray | None = None, view: str = "difference",
                    f_hi_hz: float = F_HI_HZ, db_per_unit: float = DB_PER_NEPER) -> go.Figure:
    """Three panels on one time axis (seconds): log-mel, the VTLP panel, attention weights.

    ``logmel``/``logmel_warped``: ``(n_mels, frames)`` log mel power at ``frame_times_s`` (``db_per_unit``
    dB per unit: natural log by default);
    ``band_hz (n_mels,)``: each band's centre frequency (None: band numbers). ``view``: the VTLP panel
    shows the ``"difference"`` warped − original (diverging scale, dB) or the ``"warped"`` spectrogram.
    ``attention``: ``(frames',)`` at ``attention_times_s``. ``speech_segments_s``: where speech was
    detected; the rest of the clip's original timeline is shaded grey in every panel.
    """
    if view not in VTLP_VIEWS:
        raise ValueError(f"view must be one of {VTLP_VIEWS}, not {view!r}")
    rows = 3 if logmel_warped is not None else 2
    ref = float(np.max(logmel))
    frame_times_s, logmel, logmel_warped = decimate(frame_times_s, logmel, logmel_warped)
    original = to_db(logmel, ref, db_per_unit)
    titles = ["log-mel spectrogram"]
    if logmel_warped is not None:
        titles.append(f"VTLP alpha = {alpha:.2f}: warped − original" if view == "difference"
                      else f"after VTLP, alpha = {alpha:.2f}")
    titles.append("attention weight")
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.09, subplot_titles=titles,
                        row_heights=[0.37, 0.37, 0.26] if rows == 3 else [0.6, 0.4])
    y = np.asarray(band_hz, dtype=float) if band_hz is not None else np.arange(logmel.shape[0])
    unit = "Hz" if band_hz is not None else "band"
    hover = SPEC_HOVER if band_hz is not None else "%{x:.2f} s · band %{y} · %{z:.1f} dB<extra></extra>"
    zmin = max(float(original.min()), -80.0)
    fig.add_trace(go.Heatmap(x=frame_times_s, y=y, z=original, colorscale=PALETTE, zmin=zmin, zmax=0.0,
                             colorbar=_colorbar(fig, 1, "dB re peak"), name="log-mel", hovertemplate=hover),
                  row=1, col=1)
    if logmel_warped is not None:
        warped = to_db(logmel_warped, ref, db_per_unit)
        if view == "difference":
            diff = warped - original
            span = float(np.percentile(np.abs(diff), 99)) or 1.0
            fig.add_trace(go.Heatmap(x=frame_times_s, y=y, z=diff, colorscale=DIVERGING, zmid=0.0,
                                     zmin=-span, zmax=span, colorbar=_colorbar(fig, 2, "Δ dB"),
                                     name="warped − original",
                                     hovertemplate=DIFF_HOVER if band_hz is not None else hover), row=2, col=1)
        else:
            fig.add_trace(go.Heatmap(x=frame_times_s, y=y, z=warped, colorscale=PALETTE, zmin=zmin, zmax=0.0,
                                     showscale=False, name=f"VTLP alpha = {alpha:.2f}", hovertemplate=hover),
                          row=2, col=1)
        if band_hz is not None:
            knee = warp_breakpoint_hz(alpha, f_hi_hz)
            fig.add_hline(y=knee, line=dict(color="white" if view == "warped" else "black", dash="dash", width=1),
                          row=2, col=1)
            fig.add_annotation(x=1, xref="x2 domain", xanchor="right", y=knee, yref="y2", yanchor="bottom",
                               text=f"warp breakpoint {knee / 1000:.2f} kHz", showarrow=False,
                               font=dict(size=11, color="black"), bgcolor="rgba(255,255,255,0.8)")
    fig.add_trace(go.Scatter(x=attention_times_s, y=attention, mode="lines", line=dict(width=2, color="#d62728"),
                             fill="tozeroy", name="attention",
                             hovertemplate="%{x:.2f} s · weight %{y:.3f}<extra></extra>"),
                  row=rows, col=1)
    end = float(max(frame_times_s[-1] if len(frame_times_s) else 0, attention_times_s[-1] if len(attention_times_s) else 0))
    for r in range(1, rows + 1):
        fig.update_xaxes(range=[0, end], row=r, col=1)
        fig.update_yaxes(title_text=f"frequency ({unit})" if r < rows else "weight", row=r, col=1)
    if speech_segments_s is not None:  # one shapes list, set once (add_vrect per shape is slow)
        grey = non_speech(speech_segments_s, end)
        shapes = list(fig.layout.shapes) + [
            # a pale veil over the dark spectrograms (grey vanished there), grey over light panels
            dict(type="rect", xref=f"x{'' if r == 1 else r}", yref=f"y{'' if r == 1 else r} domain", x0=a, x1=b,
                 y0=0, y1=1, fillcolor=colour, opacity=0.55 if colour == "white" else 0.35,
                 line=dict(color=colour, width=1, dash="dot"), layer="above")
            for r in range(1, rows + 1) for a, b in grey
            for colour in ["white" if r == 1 or (r < rows and view == "warped") else "grey"]]
        fig.update_layout(shapes=shapes)
    fig.update_xaxes(title_text="time (s) · veiled (pale / grey): no speech detected", row=rows, col=1)
    # the title sits under the toolbar's row (which shows on hover at the top right), so neither covers the other
    fig.update_layout(height=FIGURE_HEIGHT, margin=dict(l=60, r=10, t=88, b=50), showlegend=False, modebar=MODEBAR,
                      title=dict(text=title, x=0.01, xanchor="left", y=1 - 36 / FIGURE_HEIGHT, yanchor="top",
                                 font=dict(size=16)))
    return fig


def warp_figure(alpha: float, sample_rate: int = 16000, f_hi_hz: float = F_HI_HZ) -> go.Figure:
    """The VTLP warp f -> f' (kHz), with the identity for reference and the breakpoint marked."""
    f = np.linspace(0, sample_rate / 2, 400)
    g = warp_frequency(f, alpha, sample_rate, f_hi_hz)
    knee_out = warp_breakpoint_hz(alpha, f_hi_hz)
    knee_in = knee_out / alpha
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=f / 1000, y=f / 1000, mode="lines", line=dict(dash="dot", color="grey"), name="identity"))
    fig.add_trace(go.Scatter(x=f / 1000, y=g / 1000, mode="lines", line=dict(color="#1f77b4", width=3),
                             name=f"alpha = {alpha:.2f}"))
    fig.add_trace(go.Scatter(x=[knee_in / 1000], y=[knee_out / 1000], mode="markers+text",
                             marker=dict(size=9, color="black"),
                             # the knee is drawn at (f, f'): the label names both, below the curve where no line runs
                             text=[f"breakpoint {knee_in / 1000:.2f} → {knee_out / 1000:.2f} kHz"],
                             textposition="bottom right", name="breakpoint"))
    fig.update_layout(height=260, margin=dict(l=50, r=10, t=40, b=40), title=dict(text="VTLP warp", x=0.01),
                      xaxis_title="f (kHz)", yaxis_title="f' (kHz)", showlegend=False)
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str = "") -> go.Figure:
    """Colours: each true class's row normalised to 1 (recall on the diagonal); numbers: clip counts."""
    cm = np.asarray(confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=rates, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
                               text=cm.astype(int), texttemplate="%{text}",
                               colorbar=dict(title=dict(text="share of row", side="right"), thickness=10),
                               hovertemplate="true %{y}, predicted %{x}: %{text} clip(s), %{z:.0%} of the row"
                                             "<extra></extra>"))
    fig.update_layout(height=520, margin=dict(l=80, r=10, t=128, b=60), modebar=MODEBAR,
                      title=dict(text=f"{title}<br><sup>colour: row-normalised share of the true class"
                                      "<br>numbers: clip counts · rows: true class</sup>", x=0.01, xanchor="left",
                                 y=1 - 54 / 520, yanchor="top", font=dict(size=15)),
                      xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return fig


def reliability_figure(bins: list[dict], title: str = "", height: int = 300) -> go.Figure:
    """Calibration as a reliability diagram: per confidence bin the share of answers that were right (bars)
    against the diagonal of perfect calibration; empty bins are left out; hover gives the bin's count."""
    used = [b for b in bins or [] if b.get("n") and b.get("accuracy") is not None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#888"),
                             name="perfectly calibrated", hoverinfo="skip"))
    fig.add_trace(go.Bar(x=[(b["from"] + b["to"]) / 2 for b in used], y=[b["accuracy"] for b in used],
                         width=[(b["to"] - b["from"]) * 0.9 for b in used], name="share right",
                         customdata=[[b["n"], b.get("confidence")] for b in used], marker_color="#4c72b0",
                         hovertemplate="confidence %{customdata[1]:.2f}<br>right %{y:.0%}<br>%{customdata[0]} clips"
                                       "<extra></extra>"))
    fig.update_layout(title=dict(text=title, font=dict(size=13)), height=height, margin=dict(l=50, r=10, t=40, b=40),
                      xaxis=dict(title="model's confidence", range=[0, 1]),
                      yaxis=dict(title="share right", range=[0, 1]), showlegend=False, bargap=0)
    return fig


def decimate(times_s: np.ndarray, *panels: np.ndarray | None, max_columns: int = MAX_COLUMNS):
    """Average neighbouring frames so a panel has at most ``max_columns`` columns (a 60 s clip has 6,000
    frames, more than a screen has pixels); times become each group's mean. Short clips pass unchanged."""
    n = len(times_s)
    k = -(-n // max_columns)
    if k <= 1:
        return (times_s, *panels)
    m = n // k * k
    def pool(x):
        return None if x is None else np.asarray(x)[..., :m].reshape(*np.shape(x)[:-1], m // k, k).mean(-1)
    return (pool(np.asarray(times_s)), *[pool(p) for p in panels])


def non_speech(segments_s: list[tuple[float, float]], end_s: float) -> list[tuple[float, float]]:
    """The complement of speech segments within ``[0, end_s]``."""
    out, t = [], 0.0
    for a, b in sorted(segments_s):
        if a > t:
            out.append((t, float(a)))
        t = max(t, float(b))
    if t < end_s:
        out.append((t, float(end_s)))
    return out


def db_per_unit(cfg) -> float:
    """dB per unit of a front end's log-mel: its config's ``db_per_unit``, else the ``DB_PER_UNIT`` of the
    module that defines the config (Whisper's scale: 40), else natural log."""
    value = getattr(cfg, "db_per_unit", None)
    if value is None:
        value = getattr(sys.modules.get(type(cfg).__module__), "DB_PER_UNIT", DB_PER_NEPER)
    return float(value)


def mel_band_hz(cfg) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of a front end's config (``n_mels``, ``fmin_hz``, ``fmax_hz``,
    ``sample_rate``; Slaney mel scale, as its filters)."""
    import librosa

    fmax = min(getattr(cfg, "fmax_hz", None) or cfg.sample_rate / 2, cfg.sample_rate / 2)
    return librosa.mel_frequencies(cfg.n_mels + 2, fmin=getattr(cfg, "fmin_hz", 0.0), fmax=fmax, htk=False)[1:-1]


# ------------------------------------------------------------------------------ emotion over time
TIMELINE_HEIGHT = 560
LIVE_HEIGHT = 300
GRID_POINTS = 2400  # at most this many time steps in the probability area
ENVELOPE_POINTS = 3000
COLOURS = {"neutral": "#9e9e9e", "happy": "#f2b701", "sad": "#3969ac", "angry": "#e73f74", "fear": "#7f3c8d",
           "disgust": "#11a579", "surprise": "#f97b2f", "calm": "#80ba5a", "boredom": "#a5aa99"}
OTHER = ["#008695", "#cf1c90", "#4b4b8f", "#e68310"]


def colour(label: str, classes: list[str]) -> str:
    return COLOURS.get(label) or OTHER[classes.index(label) % len(OTHER) if label in classes else 0]


# ------------------------------------------------------------------------------------- figures
def _envelope(tl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, lo, hi = tl.envelope_times_s, tl.envelope_min, tl.envelope_max
    step = max(1, int(np.ceil(len(t) / ENVELOPE_POINTS)))
    n = len(t) // step * step
    if step > 1 and n:
        t = t[:n].reshape(-1, step).mean(1)
        lo, hi = lo[:n].reshape(-1, step).min(1), hi[:n].reshape(-1, step).max(1)
    return t, lo, hi


def timeline_figure(tl, selected: int | None = None) -> go.Figure:
    """Three rows on one time axis: the dominant emotion per segment (labelled where it fits), class
    probabilities over time (stacked; empty in pauses), the waveform overview; segments outlined."""
    step = max(0.02, tl.duration_s / GRID_POINTS)
    t, grid = tl.probability_grid(step)
    # steps: each value holds from its cell's left edge to the next (and the last to the end)
    t = np.append(t - step / 2, tl.duration_s)
    grid = np.nan_to_num(np.concatenate([grid, grid[:, -1:]], axis=1), nan=0.0)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.1, 0.56, 0.34],
                        subplot_titles=["dominant emotion per segment (hatched ✎: a person's label; hover: the model's)",
                                        "class probabilities over time (mean of the windows; blank: no speech)",
                                        "waveform"])
    for c, row in zip(tl.classes, grid):
        fig.add_trace(go.Scatter(x=t, y=row, mode="lines", stackgroup="p", line=dict(width=0, shape="hv",
                                 color=colour(c, tl.classes)), fillcolor=colour(c, tl.classes), name=c,
                                 opacity=0.85, legendgroup=c,
                                 hovertemplate=f"{c} %{{y:.0%}} at %{{x:.1f}} s<extra></extra>"), row=2, col=1)
    segs = tl.segments
    human = [getattr(s, "human_label", None) for s in segs]  # a person's correction wins the bar, hatched
    fig.add_trace(go.Bar(base=[s.start_s for s in segs], x=[s.duration_s for s in segs], y=[""] * len(segs),
                         orientation="h", marker=dict(color=[colour(h or s.label(), tl.classes) for s, h in zip(segs, human)],
                                                      pattern=dict(shape=["/" if h else "" for h in human],
                                                                   fgcolor="white", fgopacity=0.35),
                                                      line=dict(width=[3 if s.index == selected else 0 for s in segs],
                                                                color="black")),
                         text=[f"{h} ✎" if h else s.label() for s, h in zip(segs, human)],  # short: bars are narrow
                         textposition="inside", insidetextanchor="middle",
                         textfont=dict(color="white", size=12), showlegend=False, width=0.9,
                         customdata=[[s.index + 1, s.confidence(), s.label(),
                                      f"{h} by {s.annotator}" if h else "not relabelled"] for s, h in zip(segs, human)],
                         hovertemplate="segment %{customdata[0]}: model %{customdata[2]} %{customdata[1]:.0%}; "
                                       "human: %{customdata[3]}<br>%{base:.2f} s + %{x:.2f} s<extra></extra>"),
                  row=1, col=1)
    et, lo, hi = _envelope(tl)
    fig.add_trace(go.Scatter(x=et, y=hi, mode="lines", line=dict(width=0.5, color="#555"), showlegend=False,
                             hoverinfo="skip"), row=3, col=1)
    fig.add_trace(go.Scatter(x=et, y=lo, mode="lines", line=dict(width=0.5, color="#555"), fill="tonexty",
                             fillcolor="rgba(80,80,80,0.5)", showlegend=False, hoverinfo="skip"), row=3, col=1)
    shapes = []
    for s in segs:  # outline each segment over the probability and waveform rows
        sel = s.index == selected
        for yref in ("y2 domain", "y3 domain"):
            shapes.append(dict(type="rect", xref="x2" if yref.startswith("y2") else "x3", yref=yref, x0=s.start_s,
                               x1=s.end_s, y0=0, y1=1, line=dict(color="black" if sel else "rgba(0,0,0,0.45)",
                                                                width=2.5 if sel else 0.8),
                               fillcolor="rgba(0,0,0,0)", layer="above"))
    fig.update_layout(shapes=shapes)
    fig.update_xaxes(range=[0, tl.duration_s])
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    fig.update_yaxes(showticklabels=False, fixedrange=True, row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title_text="probability", fixedrange=True, row=2, col=1)
    peak = float(max(np.abs(lo).max() if len(lo) else 0, np.abs(hi).max() if len(hi) else 0, 1e-3))
    fig.update_yaxes(range=[-peak, peak], showticklabels=False, fixedrange=True, row=3, col=1)
    fig.update_layout(height=TIMELINE_HEIGHT, margin=dict(l=60, r=10, t=70, b=45), bargap=0,
                      uniformtext=dict(minsize=10, mode="hide"), hovermode="closest",
                      legend=dict(orientation="h", x=0, y=-0.13, yanchor="top"),
                      title=dict(text=f"{tl.name}: {len(segs)} segment{'s' if len(segs) != 1 else ''} in "
                                      f"{tl.duration_s:.0f} s — {tl.checkpoint}",
                                 x=0.01, y=0.99, yanchor="top"))
    return fig


def live_figure(windows: list, classes: list[str], duration_s: float, min_speech_s: float) -> go.Figure:
    """The rolling predictions so far: each class's probability at the end of its window; windows with
    too little speech leave a gap."""
    fig = go.Figure()
    x = [w.end_s for w in windows]
    for c in classes:
        y = [w.probabilities["emotion"][c] if w.speech_s >= min_speech_s else None for w in windows]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=c, line=dict(color=colour(c, classes), width=2),
                                 marker=dict(size=4), connectgaps=False,
                                 hovertemplate=f"{c} %{{y:.0%}} at %{{x:.1f}} s<extra></extra>"))
    fig.update_layout(height=LIVE_HEIGHT, margin=dict(l=55, r=10, t=40, b=40),
                      title=dict(text="live: the latest 3 s, every second (gaps: no speech)", x=0.01),
                      xaxis=dict(title="time (s)", range=[0, max(10.0, duration_s)]),
                      yaxis=dict(title="probability", range=[0, 1], tickformat=".0%"),
                      legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"))
    return fig
