"""Voice adaptation's arithmetic (serdemo.voice) and the probe that runs it, on synthetic statistics:
voices as offsets, emotions as offsets within a voice, so what each estimator recovers is known."""

import numpy as np
import pytest
import torch

from serdemo.models.probe import LinearProbe
from serdemo.voice import NormStats, VoiceProfile, VoiceRule, adapt_offsets, speaker_offsets
from training.probe import fit_probe, to_model, voice_normalise

DIM, N_CLASSES = 1024, 3  # one layer of statistics (mean and std of 512 dimensions)


def synthetic(n_speakers=12, per_class=20, seed=0, voice_scale=4.0, emotion_scale=0.08):
    """Clips = voice offset (large, random per speaker) + emotion offset (fixed per class) + noise."""
    rng = np.random.default_rng(seed)
    emotions = rng.normal(0, emotion_scale, (N_CLASSES, DIM))
    x, y, spk, voices = [], [], [], {}
    for s in range(n_speakers):
        v = rng.normal(0, voice_scale, DIM)
        voices[f"c:{s}"] = v
        for c in range(N_CLASSES):
            for _ in range(per_class):
                x.append(v + emotions[c] + rng.normal(0, 1.0, DIM))
                y.append(c)
                spk.append(f"c:{s}")
    return np.array(x), np.array(y), np.array(spk), voices, emotions


def test_rule_refuses_unknown_modes_and_bad_values():
    with pytest.raises(ValueError, match="voice must be one of"):
        VoiceRule("speaker")
    with pytest.raises(ValueError, match="voice_tau"):
        VoiceRule("mean", -1.0)
    with pytest.raises(ValueError, match="voice_posterior"):
        VoiceRule("mean", 3.0, "yes")


def test_shrinkage_by_clip_count():
    ns = NormStats(np.zeros(DIM), np.ones(DIM), np.zeros((N_CLASSES, DIM)))
    clips = np.full((1, DIM), 8.0)
    none = lambda z: np.zeros((len(z), N_CLASSES))
    off0, _ = adapt_offsets(clips[:0], ns, VoiceRule("mean", 3.0), none)
    off1, _ = adapt_offsets(clips, ns, VoiceRule("mean", 3.0), none)
    off9, _ = adapt_offsets(np.repeat(clips, 9, 0), ns, VoiceRule("mean", 3.0), none)
    assert np.allclose(off0, 0) and np.allclose(off1, 8 * 1 / 4) and np.allclose(off9, 8 * 9 / 12)


def test_training_offsets_with_labels_ignore_a_skewed_speaker():
    x, y, spk, voices, _ = synthetic(emotion_scale=1.5)
    # speaker c:0 keeps only its class-0 clips: a skewed speaker
    keep = (spk != "c:0") | (y == 0)
    x, y, spk = x[keep], y[keep], spk[keep]
    gm = x.mean(0)
    plain, _, _ = speaker_offsets(x, spk, gm)
    aware, _, _ = speaker_offsets(x, spk, gm, y, N_CLASSES)
    # the aware offsets of every speaker agree with the voices up to one shared shift; the plain ones do not
    # for the skewed speaker (its mean carries its one emotion)
    truth = np.stack([voices[s] for s in spk])
    err = lambda off: np.abs((off - truth) - (off - truth).mean(0))[spk == "c:0"].mean()
    assert err(aware) < 0.35 * err(plain)


def test_posterior_estimate_survives_a_skewed_draw_that_the_plain_mean_does_not():
    x, y, spk, voices, _ = synthetic(seed=1)
    train = spk != "c:11"
    rule_post, rule_plain = VoiceRule("mean", 0.0, True), VoiceRule("mean", 0.0, False)
    xa, ns = voice_normalise(x[train], y[train], spk[train], N_CLASSES, rule_post, train="aware")
    clf, mean, std, _, _ = fit_probe(xa, y[train], xa[:0], y[train][:0], N_CLASSES, c_grid=(0.5,), classifier="lda")
    model = to_model(clf, mean, std, ["a", "b", "c"], 4, [2], True, rule_post, ns)
    test = np.flatnonzero(~train)
    skew = np.concatenate([test[y[test] == 2][:16], test[y[test] != 2][:4]])  # 80 % of one emotion
    w, b = clf.coef_, clf.intercept_
    logits = lambda z: ((z - mean) / std) @ w.T + b
    off_post, _ = adapt_offsets(x[skew], ns, rule_post, logits)
    off_plain, _ = adapt_offsets(x[skew], ns, rule_plain, logits)
    truth, _ = adapt_offsets(x[test], ns, rule_plain, logits)  # every emotion alike: the plain mean is right
    ua = lambda off: np.mean([(logits(x[test][y[test] == c] - ns.global_mean - off).argmax(1) == c).mean()
                              for c in range(N_CLASSES)])
    assert ua(off_post) >= ua(off_plain) + 0.05  # measured 0.78 against 0.70 (all clips: 0.83)
    assert np.linalg.norm(off_post - truth) < np.linalg.norm(off_plain - truth)
    # the model's own estimate is the same arithmetic
    off_model, _ = model.voice_offsets(x[skew])
    assert np.allclose(off_model, off_post, atol=1e-4)


def test_probe_forward_reads_the_voice_and_old_probes_are_unchanged():
    x, y, spk, _, _ = synthetic(seed=2)
    rule = VoiceRule("mean", 3.0, False)
    xa, ns = voice_normalise(x, y, spk, N_CLASSES, rule)
    clf, mean, std, _, _ = fit_probe(xa, y, xa[:0], y[:0], N_CLASSES, c_grid=(0.5,), classifier="lda")
    model = to_model(clf, mean, std, ["a", "b", "c"], 4, [2], True, rule, ns)
    assert model.adapts and {"voice_mean", "voice_var", "class_offsets"} <= set(model.state_dict())
    old = LinearProbe(0, {"emotion": 3}, n_layers=4, layers=[2], frame_norm=True, classifier="lda")
    assert not old.adapts and "voice_mean" not in old.state_dict()
    off, scale = model.voice_offsets(x[spk == "c:3"])
    got = model.logits_from_statistics(torch.as_tensor(x[:5], dtype=torch.float32), (off, scale))["emotion"]
    want = ((x[:5] - ns.global_mean - off) / scale - mean) / std @ clf.coef_.T + clf.intercept_
    assert np.allclose(got.detach().numpy(), want, atol=1e-3)
    # no voice: relative to the training voices' mean
    got0 = model.logits_from_statistics(torch.as_tensor(x[:5], dtype=torch.float32))["emotion"]
    assert np.allclose(got0.detach().numpy(), ((x[:5] - ns.global_mean) - mean) / std @ clf.coef_.T + clf.intercept_, atol=1e-3)
    with pytest.raises(ValueError, match="does not adapt"):
        old.voice_offsets(x[:3])


def test_voice_profile_counts_each_clip_once_and_refuses_another_models_statistics():
    p = VoiceProfile("alice")
    p.add(np.ones((2, 4)), "enc|[2]|True", key=None)
    p.add(np.ones(4), "enc|[2]|True", key="clip-a")
    p.add(np.ones(4), "enc|[2]|True", key="clip-a")
    assert p.n_clips == 3
    with pytest.raises(ValueError, match="another model"):
        p.add(np.ones(4), "other|[2]|True")
    for i in range(VoiceProfile.MAX_CLIPS + 5):
        p.add(np.full(4, i), "enc|[2]|True", key=f"k{i}")
    assert p.n_clips == VoiceProfile.MAX_CLIPS and p.statistics()[-1, 0] == VoiceProfile.MAX_CLIPS + 4


@pytest.mark.parametrize("n_classes", [2, 4])
def test_fast_shrinkage_lda_equals_scikit_learns(n_classes):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from training.probe import ShrinkageLDA

    rng = np.random.default_rng(3)
    y = rng.integers(0, n_classes, 300)
    x = rng.normal(0, 1, (300, 40)) + y[:, None] * rng.normal(0, 0.3, 40) + rng.normal(0, 2, 40)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.8, priors=np.full(n_classes, 1 / n_classes)).fit(x, y)
    got = ShrinkageLDA(0.8).fit(x, y)
    assert np.allclose(got.coef_, ref.coef_, atol=1e-8) and np.allclose(got.intercept_, ref.intercept_, atol=1e-8)
    assert (got.predict(x) == ref.predict(x)).all()


def test_ood_score_flags_statistics_unlike_the_training_clips():
    """Training clips vary along a few directions; a 'new corpus' adds variation outside them."""
    from training.probe import fit_ood

    rng = np.random.default_rng(4)
    dirs = rng.normal(0, 1, (8, DIM))

    def clips(n, extra=0.0):
        return rng.normal(0, 3, (n, 8)) @ dirs + rng.normal(0, 1, (n, DIM)) + extra * rng.normal(0, 1, (n, DIM))

    x = clips(400)
    spk = np.repeat([f"s{i}" for i in range(20)], 20)
    ood = fit_ood(x, spk, k=8)
    x_tr, y_tr = x, np.arange(400) % 3
    clf, mean, std, _, _ = fit_probe(x_tr, y_tr, x_tr[:0], y_tr[:0], 3, c_grid=(0.5,), classifier="lda")
    model = to_model(clf, mean, std, ["a", "b", "c"], 4, [2], True, ood=ood)
    same = model.ood_score(torch.as_tensor(clips(200), dtype=torch.float32)).numpy()
    new = model.ood_score(torch.as_tensor(clips(200, extra=1.0), dtype=torch.float32)).numpy()
    assert (same > 1).mean() < 0.05 and (new > 1).mean() > 0.95
    assert "ood_basis" in model.state_dict() and model.has_ood


def test_a_probe_with_a_clip_head_reads_lone_clips_with_it_and_voices_with_the_voice_head():
    from training.probe import fit_voice_probe

    x, y, spk, _, _ = synthetic(seed=5)
    hp = {"classifier": "lda", "voice": "mean", "voice_tau": 3.0, "clip_head": True}
    model, _, _ = fit_voice_probe(x, y, spk, np.array(["c"] * len(y)), N_CLASSES, ["a", "b", "c"], 4, [2], True,
                                  hp, 0.5)
    assert model.has_clip_head and model.adapts
    plain, _, _ = fit_voice_probe(x, y, spk, np.array(["c"] * len(y)), N_CLASSES, ["a", "b", "c"], 4, [2], True,
                                  {"classifier": "lda"}, 0.5)  # the same classifier on statistics as they are
    xt = torch.as_tensor(x[:6], dtype=torch.float32)
    with torch.no_grad():
        lone = model.logits_from_statistics(xt)["emotion"].numpy()
        want = plain.logits_from_statistics(xt)["emotion"].numpy()
        adapted = model.logits_from_statistics(xt, model.voice_offsets(x[spk == spk[0]]))["emotion"].numpy()
    assert np.allclose(lone, want, atol=1e-3) and not np.allclose(adapted, lone, atol=1e-1)
    with pytest.raises(ValueError, match="clip_head needs voice adaptation"):
        LinearProbe(0, {"emotion": 3}, n_layers=4, layers=[2], clip_head=True)


def test_the_analyse_tab_says_when_a_clip_is_unlike_the_training_recordings():
    from serdemo.inference import Prediction
    from serdemo.workbench import UNUSUAL_NOTE, unusual_note

    def pred(ood):
        return Prediction({"emotion": {"a": 1.0}}, np.ones(1), np.zeros(1), np.zeros((1, 1)), np.zeros(1), 1.0, ood=ood)

    assert pred(2.0).unusual and unusual_note(pred(2.0)) == UNUSUAL_NOTE
    assert not pred(0.5).unusual and unusual_note(pred(0.5)) == "" and unusual_note(pred(None)) == ""
