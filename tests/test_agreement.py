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
                store.add_label(clip, lab, who)


def test_per_clip_labels_and_whether_they_agree(store):
    label(store, {"ann": ["sad", "sad", "happy", None, "angry"], "bob": ["sad", "happy", "happy", "fear", None]})
    store.add_label(store.clips[1], "sad", "bob")  # bob changes his mind: his latest label counts
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
            s.add_label(clip, lab, who)
    kappa = agreement.compute(s).fleiss_kappa
    assert kappa == pytest.approx(1 / 3)
    assert np.isfinite(kappa)


def test_no_labels_no_kappa(tmp_path):
    result = agreement.compute(Store(tmp_path / "empty"))
    assert result.clips == [] and result.annotators == [] and result.fleiss_kappa is None
