"""Voice adaptation in the app (issue 25): the Analyse tab's voice names, the annotation queue's known speakers,
and their bounds, on real corpus clips through the Workbench (no browser, no server)."""

from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import EMODB, RAVDESS, ROOT

pytestmark = pytest.mark.timeout(600)

SPEAKER_03 = [EMODB / "wav" / f"{n}.wav" for n in ("03a01Wa", "03a02Ta", "03a01Nc")]  # anger, sadness, neutral


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from serdemo.workbench import Settings, Workbench

    for path in SPEAKER_03:
        if not path.exists():
            pytest.skip(f"shared corpus file not found: {path}")
    b = Workbench(Settings(checkpoint_dirs=(ROOT / "checkpoints",), data_dir=tmp_path_factory.mktemp("data")))
    assert b.predictor("default").adapts, "the shipped default adapts to voices (issue 25)"
    return b


def close(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < tol


def stored(bench, path):
    from serdemo.store import as_stored

    return as_stored(bench.predictor("default").load(str(path)))


def test_clips_analysed_under_one_voice_name_adapt_together(bench):
    """The second clip under a name is read relative to both clips (predict_voice on the two), the result says
    over how many; the name is normalised (NFKC, case, spaces); the same clip twice counts once; another name or
    another person's scope does not mix; no name reads the clip on its own; a voice can be forgotten."""
    from serdemo.endpoints import Endpoints

    p = bench.predictor("default")
    first, second = SPEAKER_03[:2]
    a1 = bench.analyse(str(first), "default", 1.0, voice=" Alice ", scope="login:ann")
    assert a1.voice_clips == 1 and a1.voice == "Adapted to voice 'alice' over 1 clip"
    a2 = bench.analyse(str(second), "default", 1.0, voice="\uff21\uff2c\uff29\uff23\uff25", scope="login:ann")  # ＡＬＩＣＥ
    assert a2.voice_clips == 2 and a2.voice == "Adapted to voice 'alice' over 2 clips"
    together = p.predict_voice([stored(bench, first), stored(bench, second)])
    assert [t.voice_clips for t in together] == [2, 2]
    assert close(a2.probabilities, together[1].probabilities["emotion"]) and a2.predicted == together[1].label()
    assert bench.store.clip_info(a2.clip_id)["predicted"] == a2.predicted  # the store keeps the adapted guess
    assert "Adapted to voice 'alice' over 2 clips" in Endpoints(bench).analysis_outputs(a2)[5]
    again = bench.analyse(str(second), "default", 1.0, voice="alice", scope="login:ann")
    assert again.voice_clips == 2 and close(again.probabilities, a2.probabilities)  # not counted twice

    alone = p.predict_voice([stored(bench, second)])[0]
    bob = bench.analyse(str(second), "default", 1.0, voice="bob", scope="login:ann")
    elsewhere = bench.analyse(str(second), "default", 1.0, voice="alice", scope="login:someone-else")
    for r in (bob, elsewhere):
        assert r.voice_clips == 1 and close(r.probabilities, alone.probabilities["emotion"])
    assert max(abs(bob.probabilities[k] - a2.probabilities[k]) for k in bob.probabilities) > 1e-3

    plain = bench.analyse(str(second), "default", 1.0)
    assert plain.voice == "Read on its own (no voice name)" and plain.voice_clips == 0
    own = p.predict_batch([stored(bench, second)], alpha=None)[0]
    assert close(plain.probabilities, own.probabilities["emotion"])

    assert bench.forget_voice("ALICE ", "login:ann") == "Forgot voice 'alice' (2 clips): its next clip starts anew."
    assert bench.forget_voice("alice", "login:ann") == "No clips are held under voice 'alice'."
    assert bench.analyse(str(second), "default", 1.0, voice="alice", scope="login:ann").voice_clips == 1


def test_a_voice_name_is_checked_and_its_scope_is_the_login_the_annotator_or_the_session(bench):
    import gradio as gr

    from serdemo.uikit import voice_scope
    from serdemo.workbench import shown_name, voice_name

    assert voice_name(None) == voice_name("  ") == ""
    assert voice_name("  Mary   Jane ") == "mary jane" and voice_name("ＭＡＲＹ") == "mary"
    assert voice_name("x" * 64) == "x" * 64
    for bad, says in (("x" * 65, "at most 64"), ("a\u200bb", "control or invisible"), ("a\x00b", "control"),
                      ("\ufdfa" * 60, "at most 64")):  # one character NFKC turns into 18
        with pytest.raises(gr.Error, match=says):
            voice_name(bad)
    with pytest.raises(gr.Error, match="at most 64"):  # refused before the clip is decoded or stored
        bench.analyse(str(SPEAKER_03[0]), "default", 1.0, voice="y" * 80)
    assert shown_name("<b>*x*</b>") == "&lt;b&gt;\\*x\\*&lt;/b&gt;"
    session = SimpleNamespace(username=None, session={}, session_hash="abc")
    assert voice_scope(SimpleNamespace(username="alice"), "typed") == "login:alice"
    assert voice_scope(session, " Ann  Lee ") == "annotator:ann lee"
    assert voice_scope(session, "") == "session:abc" and voice_scope(None) == ""


def test_the_voice_book_is_bounded_and_forgets_the_least_recently_used():
    from serdemo.workbench import VoiceBook

    book = VoiceBook(max_voices=3, max_clips=4, max_total=6)
    for name in ("a", "b", "c"):
        book.get("s", name, "L").profile.add(np.ones((2, 3)), "L")
    book.get("s", "a", "L")  # used again: "b" is now the least recently used
    book.get("s", "d", "L")
    assert len(book) == 3 and book.clips("s", "b") == 0 and book.clips("s", "a") == 2
    voice = book.get("s", "d", "L")
    voice.profile.add(np.arange(15.0).reshape(5, 3), "L")
    assert voice.profile.n_clips == 4  # a voice keeps its latest max_clips
    book.trim()  # 2 + 2 + 4 clips > 6: the least recently used goes
    assert book.clips("s", "c") == 0 and book.clips("s", "d") == 4 and len(book) == 2
    assert book.forget("s", "d") == 4 and book.clips("s", "d") == 0 and book.forget("s", "zzz") == 0


def test_the_queue_reads_a_known_speakers_stored_clips_relative_to_their_voice(bench, monkeypatch):
    """Three stored clips of EMO-DB speaker 03 (known from their file names) are guessed relative to the voice
    of the three; two clips under one entered speaker likewise; a speaker with one stored clip and a clip of no
    known speaker keep their stored guesses. Statistics are computed once per clip (then cached by clip id)."""
    from serdemo.workbench import QUEUE_HEADERS

    p = bench.predictor("default")
    ids = [bench.analyse(str(c), "default", 1.0).clip_id for c in SPEAKER_03]
    lone = bench.analyse(str(RAVDESS / "Actor_01" / "03-01-05-02-01-01-01.flac"), "default", 1.0).clip_id
    anon = bench.store.add_clip(stored(bench, EMODB / "wav" / "08a01Ab.wav"), source_name="recording",
                                predicted="sad", confidence=0.99)
    entered = [bench.store.add_clip(stored(bench, RAVDESS / "Actor_02" / name), source_name="mic.wav",
                                    speaker="Pat", predicted="happy", confidence=0.98)
               for name in ("03-01-04-02-01-01-02.flac", "03-01-05-01-01-01-02.flac")]
    q = bench.queue(50, "all")
    assert QUEUE_HEADERS[-1] == "voice" and all(len(r) == len(QUEUE_HEADERS) for r in q.rows)
    rows = dict(zip(q.clip_ids, q.rows))
    stats = np.stack([r.statistics for r in p.predict_batch([stored(bench, c) for c in SPEAKER_03], alpha=None)])
    for clip, expected in zip(ids, p.predict_from_statistics(stats, voice_stats=stats)):
        label = max(expected, key=expected.get)
        assert rows[clip][1:3] == [label, f"{expected[label]:.0%}"] and rows[clip][6] == "emodb:03 ×3", rows[clip]
    for clip in (lone, anon):
        info = bench.store.clip_info(clip)
        assert rows[clip][1] == info["predicted"] and rows[clip][6] == "", rows[clip]
    assert {rows[c][6] for c in entered} == {"Pat ×2"}
    entries = {e["clip"]: e for e in bench.queue_entries(50)}
    voice = entries[ids[0]]["voice"]
    assert (voice["speaker"], voice["clips"], voice["checkpoint"]) == ("emodb:03", 3, "default")
    assert voice["predicted"] == rows[ids[0]][1] and entries[lone]["voice"] is None
    assert "read relative to speaker emodb:03's voice over 3 stored clips" in bench.clip_panel(ids[0])

    def refuse(*_a, **_k):
        raise AssertionError("a stored clip's statistics are computed once")

    monkeypatch.setattr(p, "predict_batch", refuse)
    assert bench.queue(50, "all").rows == q.rows
