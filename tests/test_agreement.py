"""Agreement between annotators, from the store's labels (each annotator's latest label per clip)."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from serdemo import agreement
from serdemo.store import Store, as_stored
from tests.conftest import harmonics


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    s.clips = [s.add_clip(as_stored(harmonics(100 + 20 * i, 0.3)), predicted="neutral", confidence=0.5,
                          checkpoint="default") for i in range(5)]
    return s


def label(store, table):
    """``table``: annotator -> labels of clips 0..n (None: not labelled)."""
    for who, labels in table.items():
        for clip, lab in zip(store.clips, labels):
            if lab:
                store.label_clip(clip, lab, who)


def test_per_clip_labels_and_whether_they_agree(store):
    label(store, {"ann": ["sad", "sad", "happy", None, "angry"], "bob": ["sad", "happy", "happy", "fear", None]})
    store.label_clip(store.clips[1], "sad", "bob")  # bob changes his mind: his latest label counts
    result = agreement.compute(store)
    by_clip = {c.clip: c for c in result.clips}
    assert by_clip[store.clips[0]].labels == {"ann": "sad", "bob": "sad"} and by_clip[store.clips[0]].agree
    assert by_clip[store.clips[1]].agree is True  # after the change
    assert by_clip[store.clips[3]].agree is None  # one annotator only
    assert len(result.clips) == 5


def test_per_annotator_counts_agreement_and_library_kappas(store):
    ann = ["sad", "sad", "happy", "angry", "angry"]
    bob = ["sad", "happy", "happy", "angry", "sad"]
    cat = ["sad", "sad", "happy", "angry", None]
    label(store, {"ann": ann, "bob": bob, "cat": cat})
    result = agreement.compute(store)
    a = {x.annotator: x for x in result.annotators}
    assert (a["ann"].n_labelled, a["cat"].n_labelled) == (5, 4)
    assert a["ann"].kappa["bob"] == pytest.approx(cohen_kappa_score(ann, bob))
    assert a["ann"].kappa["cat"] == pytest.approx(1.0)  # the same labels on their four shared clips
    # ann agrees with bob on 3 of 5 clips and with cat on 4 of 4: 7 of 9 comparisons
    assert a["ann"].agreement == pytest.approx(7 / 9)
    # Fleiss over the clips all three labelled (the most common number of raters): four clips
    assert (result.fleiss_clips, result.fleiss_raters) == (4, 3)
    assert result.fleiss_kappa is not None and -1 <= result.fleiss_kappa <= 1
    perfect = Store(store.directory.parent / "perfect")
    perfect.clips = store.clips
    for c in store.clips:
        perfect.add_clip(as_stored(harmonics(100 + 20 * store.clips.index(c), 0.3)))
    label(perfect, {"x": ann, "y": ann, "z": ann})
    assert agreement.compute(perfect).fleiss_kappa == pytest.approx(1.0)


def test_fleiss_matches_its_textbook_value(tmp_path):
    """Fleiss (1971)'s style of check on a small table computed by hand: 3 raters, 4 clips, 2 labels.
    P_i = (1, 1/3, 1/3, 1), P̄ = 2/3; each label 6 of 12 ratings, P̄e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3."""
    s = Store(tmp_path / "d")
    clips = [s.add_clip(as_stored(harmonics(100 + 20 * i, 0.3))) for i in range(4)]
    rows = [("sad", "sad", "sad"), ("sad", "sad", "happy"), ("happy", "happy", "sad"), ("happy", "happy", "happy")]
    for clip, labels in zip(clips, rows):
        for who, lab in zip("xyz", labels):
            s.label_clip(clip, lab, who)
    kappa = agreement.compute(s).fleiss_kappa
    assert kappa == pytest.approx(1 / 3)
    assert np.isfinite(kappa)


def test_no_labels_no_kappa(tmp_path):
    result = agreement.compute(Store(tmp_path / "empty"))
    assert result.clips == [] and result.annotators == [] and result.fleiss_kappa is None


# ---------------------------------------------------------------------- cost and exactness at scale
def tiny_clips(store, n):
    """``n`` distinct 10 ms clips (the audio does not matter to agreement)."""
    return [store.add_clip(np.full(160, (i + 1) / (4 * n), dtype=np.float32), predicted="neutral", confidence=0.5)
            for i in range(n)]


def test_two_hundred_annotators_on_their_own_clips_form_no_pairs(tmp_path):
    """Issue 16: 200 annotators x 3 clips took 85 s (every pair of names scanned every clip). Pairs that
    share no clip are never formed now: no kappa is computed and none is shipped to the page."""
    s = Store(tmp_path / "d")
    clips = tiny_clips(s, 600)
    for i, clip in enumerate(clips):
        s.label_clip(clip, "sad", f"annotator {i // 3:03d}")
    result = agreement.compute(s)
    assert len(result.annotators) == 200 and all(a.n_labelled == 3 and a.n_shared == 0 for a in result.annotators)
    assert sum(len(a.kappa) for a in result.annotators) == 0 and agreement.pairwise_kappas(result) == {}
    st = agreement.stats(s)
    assert st["pair_updates"] == 0 and st["kappa_computations"] == 0 and st["events"] == 600


def test_three_hundred_labels_under_a_hundred_names_cost_only_their_shared_pairs(tmp_path):
    """300 labels by 100 names over 30 clips: the work is the pairs that share a clip, once; a call with no
    new label does nothing; one new label re-reads one row and recomputes only its clip's pairs."""
    rng = np.random.default_rng(0)
    s = Store(tmp_path / "d")
    clips = tiny_clips(s, 30)
    names = [f"user{i}" for i in range(100)]
    choices = ["neutral", "happy", "sad", "angry"]
    for i in range(300):
        s.label_clip(clips[i % 30], choices[rng.integers(4)], names[rng.integers(100)])
    result = agreement.compute(s)
    per_clip = {c.clip: c.labels for c in result.clips}
    sharing = {tuple(sorted((a, b))) for labels in per_clip.values() for a in labels for b in labels if a != b}
    st = agreement.stats(s)
    assert st["kappa_computations"] == len(sharing) < 100 * 99 // 2
    assert set(agreement.pairwise_kappas(result)) == sharing
    assert st["pair_updates"] <= sum(len(x) * (len(x) - 1) for x in per_clip.values())  # at most each pair twice
    assert agreement.compute(s) is result and agreement.stats(s) == st  # nothing new: nothing done
    target = clips[0]
    s.label_clip(target, "fear", "newcomer")
    again = agreement.compute(s)
    after = agreement.stats(s)
    on_clip = len(per_clip[target])
    assert after["events"] - st["events"] == 1
    assert after["kappa_computations"] - st["kappa_computations"] == on_clip
    assert {c.clip: c.labels for c in again.clips}[target]["newcomer"] == "fear"


def test_incremental_figures_equal_scikit_learn_and_statsmodels_from_scratch(tmp_path):
    """Labels saved in rounds, annotators changing their minds: after each round every pairwise kappa
    equals scikit-learn's on the pair's shared clips, agreement shares and Fleiss (statsmodels) equal a
    computation from scratch."""
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    rng = np.random.default_rng(1)
    s = Store(tmp_path / "d")
    clips = tiny_clips(s, 25)
    names = ["ann", "bob", "cat", "dan", "eve"]
    choices = ["neutral", "happy", "sad", "angry", "fear"]
    latest: dict[str, dict[str, str]] = {}
    for round_ in range(4):
        for _ in range(40):
            clip, who = clips[rng.integers(25)], names[rng.integers(5)]
            lab = choices[min(rng.integers(3) + round_, 4)]
            s.label_clip(clip, lab, who)
            latest.setdefault(clip, {})[who] = lab
        result = agreement.compute(s)
        assert {c.clip: c.labels for c in result.clips} == {c: dict(sorted(v.items())) for c, v in latest.items()}
        kappas = agreement.pairwise_kappas(result)
        by_name = {a.annotator: a for a in result.annotators}
        for a in names:
            compared = agreed = 0
            for b in names:
                if a == b:
                    continue
                shared = [c for c, v in latest.items() if a in v and b in v]
                compared += len(shared)
                agreed += sum(latest[c][a] == latest[c][b] for c in shared)
                if not shared:
                    assert b not in by_name[a].kappa
                    continue
                x, y = [latest[c][a] for c in shared], [latest[c][b] for c in shared]
                got = kappas[tuple(sorted((a, b)))]
                if len(shared) >= 2 and len(set(x) | set(y)) >= 2:
                    assert got == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
                else:
                    assert got is None
            assert by_name[a].agreement == (pytest.approx(agreed / compared) if compared else None)
        sizes = [len(v) for v in latest.values() if len(v) >= 2]
        raters = max(set(sizes), key=lambda k: (sizes.count(k), k))
        rows = [list(v.values()) for v in latest.values() if len(v) == raters]
        cats = sorted({x for r in rows for x in r})
        table, _ = aggregate_raters(np.array([[cats.index(x) for x in r] for r in rows]), n_cat=len(cats))
        assert (result.fleiss_clips, result.fleiss_raters) == (len(rows), raters)
        assert result.fleiss_kappa == pytest.approx(fleiss_kappa(table, method="fleiss"))


def test_a_replaced_database_is_read_afresh(tmp_path):
    """The cache belongs to one database file: a store deleted and created again at the same path (fewer
    labels, other names) is not mixed with the old figures."""
    import shutil

    s = Store(tmp_path / "d")
    clips = tiny_clips(s, 3)
    for who in ("ann", "bob", "cat"):
        for clip in clips:
            s.label_clip(clip, "sad", who)
    assert len(agreement.compute(s).annotators) == 3
    s.close()
    shutil.rmtree(tmp_path / "d")
    fresh = Store(tmp_path / "d")
    clip = tiny_clips(fresh, 1)[0]
    fresh.label_clip(clip, "happy", "zed")
    result = agreement.compute(fresh)
    assert [a.annotator for a in result.annotators] == ["zed"] and result.clips[0].labels == {"zed": "happy"}
