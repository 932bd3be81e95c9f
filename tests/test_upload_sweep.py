"""Issue 29, the abuse run at 4e032ff: 11 ordinary analyses failed with "'03b10Ec.wav' does not exist. Upload it
again." The sweep deleted uploads by age alone (the benchmark's 60 s), so an upload whose event was still waiting
in the queue, or one that a re-upload of the same clip was landing in, was deleted before the analysis read it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from serdemo.housekeeping import UploadsInUse, sweep


def _upload(cache: Path, digest: str, name: str, age_s: float, now: float, size: int = 1000) -> Path:
    path = cache / digest / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    os.utime(path, (now - age_s, now - age_s))
    os.utime(path.parent, (now - age_s, now - age_s))
    return path


def _app_with_waiting_event(path: Path, running: Path | None = None):
    """Gradio's queue as the sweep reads it: an event waiting (its arguments as the client sent them: the
    upload's path in a FileData dict) and, optionally, one running."""
    waiting = SimpleNamespace(data=SimpleNamespace(data=[{"path": str(path), "meta": {"_type": "gradio.FileData"}},
                                                         "default", 1.0]))
    queue = SimpleNamespace(event_ids_to_events={"e1": waiting}, active_jobs=[None, None],
                            event_queue_per_concurrency_id={"analyze": SimpleNamespace(queue=[waiting])})
    if running is not None:
        job = SimpleNamespace(data=SimpleNamespace(data=[SimpleNamespace(path=str(running)), "default"]))
        queue.active_jobs[0] = [job]
    return SimpleNamespace(_queue=queue)


def test_an_upload_a_waiting_event_references_is_never_swept_and_ages_from_its_last_use(tmp_path):
    now = time.time()
    cache, work = tmp_path / "gradio", tmp_path / "tmp"
    work.mkdir()
    waited = _upload(cache, "a" * 64, "03b10Ec.wav", age_s=75, now=now)  # uploaded 75 s ago, still queued
    read = _upload(cache, "b" * 64, "03a01Fa.wav", age_s=90, now=now)  # its analysis is running
    stale = _upload(cache, "c" * 64, "08a02Ab.wav", age_s=75, now=now)  # nobody's: goes
    app = _app_with_waiting_event(waited, running=read)
    in_use = UploadsInUse(app)
    assert {str(waited), str(read)} <= in_use()
    report = sweep(cache, work, budget=1 << 30, max_age_s=60, min_age_s=120, now=now, in_use=in_use)
    assert waited.exists() and read.exists(), "an upload whose event waits or runs was swept"
    assert not stale.exists() and report.removed == 1
    assert abs(waited.stat().st_mtime - now) < 1  # its age counts from this use
    # the events end; the upload is then kept for the age limit counted from that use, and no longer
    app._queue.event_ids_to_events.clear()
    app._queue.event_queue_per_concurrency_id["analyze"].queue.clear()
    app._queue.active_jobs[0] = None
    sweep(cache, work, budget=1 << 30, max_age_s=60, min_age_s=120, now=now + 50, in_use=in_use)
    assert waited.exists()
    sweep(cache, work, budget=1 << 30, max_age_s=60, min_age_s=120, now=now + 70, in_use=in_use)
    assert not waited.exists() and not read.exists()


def test_the_budget_never_takes_an_upload_in_use(tmp_path):
    now = time.time()
    cache, work = tmp_path / "gradio", tmp_path / "tmp"
    work.mkdir()
    waited = _upload(cache, "a" * 64, "clip.wav", age_s=600, now=now, size=3_000_000)
    other = _upload(cache, "b" * 64, "other.wav", age_s=300, now=now, size=3_000_000)
    sweep(cache, work, budget=2_000_000, max_age_s=3600, min_age_s=120, now=now,
          in_use=UploadsInUse(_app_with_waiting_event(waited)))
    assert waited.exists() and not other.exists()


def test_a_reupload_landing_in_a_folder_being_swept_survives(tmp_path, monkeypatch):
    """Gradio names an upload's folder by its content: a user re-uploading a clip whose folder is past the age
    limit writes into the folder the sweep is removing. The sweep looked at the old file, the re-upload then
    replaced it (fresh), and the sweep removed the whole folder with the fresh upload in it."""
    now = time.time()
    cache, work = tmp_path / "gradio", tmp_path / "tmp"
    work.mkdir()
    old = _upload(cache, "d" * 64, "03b10Ec.wav", age_s=90, now=now)
    real_lstat = os.lstat
    landed = []

    def lstat_then_reupload(path, *args, **kwargs):
        st = real_lstat(path, *args, **kwargs)
        if os.fspath(path) == str(old) and not landed:  # the re-upload lands right after the sweep looked
            fresh = old.with_name(".upload-tmp")
            fresh.write_bytes(b"x" * 1000)
            os.replace(fresh, old)  # what Gradio's upload route does (os.rename into the folder)
            landed.append(True)
        return st

    monkeypatch.setattr(os, "lstat", lstat_then_reupload)
    sweep(cache, work, budget=1 << 30, max_age_s=60, min_age_s=120, now=now)
    monkeypatch.setattr(os, "lstat", real_lstat)
    assert landed
    assert old.exists() and old.read_bytes() == b"x" * 1000, "the fresh re-upload was swept with its folder"


def test_gradio_queue_still_has_what_the_sweep_reads():
    """The in-use check reads Gradio's queue by name: fail loudly here if an upgrade renames it."""
    import inspect

    from gradio import queueing
    source = inspect.getsource(queueing.Queue.__init__)
    for name in ("event_ids_to_events", "event_queue_per_concurrency_id", "active_jobs"):
        assert f"self.{name}" in source, name
    assert "self.queue" in inspect.getsource(queueing.EventQueue.__init__)
    assert "self.data" in inspect.getsource(queueing.Event.__init__)
