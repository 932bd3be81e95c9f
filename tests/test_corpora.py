"""Corpus adapters on the real shared corpora and on fixture trees with each corpus's naming rules."""

from pathlib import Path

import pytest

from serdemo import labels as L
from serdemo.labels import LABEL_SETS, get_label_set
from tests.conftest import EMODB, RAVDESS, SHARED, harmonics, shared_clip, tone, write
from training import corpora as C
from training.splits import leave_one_session_out, make_folds, speaker_folds, train_dev_test


def test_emodb_real():
    scan = C.scan_emodb(EMODB)
    assert len(scan.utterances) == 408 and not scan.problems
    spk = {u.speaker for u in scan.utterances}
    assert spk == {f"emodb:{s}" for s in ("03", "08", "09", "10", "11", "12", "13", "14")}
    u = next(u for u in scan.utterances if u.path.endswith("03a01Fa.wav"))
    assert (u.emotion, u.gender, u.corpus, u.naturalness) == ("happy", "male", "emodb", "acted")
    assert next(u for u in scan.utterances if "/08" in u.path).gender == "female"
    assert {u.emotion for u in scan.utterances} == set(LABEL_SETS["emodb7"].classes)


def test_ravdess_real():
    scan = C.scan_ravdess(RAVDESS)
    assert len(scan.utterances) == 960 and not scan.problems
    assert len({u.speaker for u in scan.utterances}) == 16
    u = next(u for u in scan.utterances if u.path.endswith("03-01-05-01-01-01-01.flac"))
    assert (u.emotion, u.gender, u.speaker) == ("angry", "male", "ravdess:01")
    assert {u.gender for u in scan.utterances if u.speaker == "ravdess:02"} == {"female"}


NEMO = SHARED / "nemo"


def test_nemo_real():
    shared_clip(NEMO / "data.tsv")
    scan = C.scan("nemo", NEMO)
    assert len(scan.utterances) == 3403 and not scan.problems and not scan.excluded
    genders = {u.speaker: u.gender for u in scan.utterances}
    assert genders == {**{f"nemo:{s}": "female" for s in ("EB0", "KD0", "MK0")},
                       **{f"nemo:{s}": "male" for s in ("KS0", "MP0", "TP0", "WR0")}}
    assert {u.emotion for u in scan.utterances} == {"angry", "fear", "happy", "neutral", "sad", "surprise"}
    assert {(u.corpus, u.naturalness) for u in scan.utterances} == {("nemo", "acted")}
    assert all(Path(u.path).is_file() for u in scan.utterances)
    u = next(u for u in scan.utterances if Path(u.path).name == "EB0_anger_1.flac")
    assert (u.emotion, u.speaker, u.gender) == ("angry", "nemo:EB0", "female")


def make_tree(root, names, wave=None):
    wave = harmonics(150, 0.5) if wave is None else wave
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        write(p, wave)
    return root


def test_unknown_names_are_reported_not_dropped(tmp_path):
    make_tree(tmp_path / "emodb", ["wav/03a01Fa.wav", "wav/03a01Xa.wav", "wav/hello.wav"])
    scan = C.scan_emodb(tmp_path / "emodb")
    assert len(scan.utterances) == 1
    assert {p.split("/")[-1]: why for p, why in scan.problems} == {
        "03a01Xa.wav": "unknown emotion letter 'X'", "hello.wav": "name does not follow SSaTTEv (e.g. 03a01Fa.wav)"}
    make_tree(tmp_path / "rav", ["Actor_01/03-01-09-01-01-01-01.wav", "Actor_02/03-01-01-01-01-01-02.wav",
                                 "Actor_02/03-02-03-01-01-01-02.wav", "Actor_03/03-01-03-01-01-01-04.wav"])
    scan = C.scan_ravdess(tmp_path / "rav")
    assert len(scan.utterances) == 1 and len(scan.excluded) == 1  # the song
    assert sorted(why for _, why in scan.problems) == ["actor 4 in the name but folder Actor_03", "unknown emotion code '09'"]


NEMO_HEADER = "file_id\temotion\traw_text\tnormalized_text\tspeaker_id\tgender\tage\n"


def nemo_row(file_id, emotion, speaker, gender):
    return f"{file_id}\t{emotion}\tTo jest zdanie.\tto jest zdanie\t        {speaker}\t{gender}\t23\n"


def test_nemo_original_layout(tmp_path):
    """The original release: .wav files, a data.tsv whose speaker_id is padded with spaces."""
    root = tmp_path / "nEMO"
    (root / "samples").mkdir(parents=True)
    for name in ("KS0_anger_1.wav", "EB0_surprised_2.wav", "EB0_contempt_4.wav", "KD0_fear_5.wav", "XX0_fear_9.wav"):
        write(root / "samples" / name, tone(220, 0.3, sr=24000), sr=24000)
    write(root / "samples" / "KS0_anger_1.flac", tone(220, 0.3))  # the same clip converted: counted once
    (root / "data.tsv").write_text(NEMO_HEADER + nemo_row("KS0_anger_1.wav", "anger", "KS0", "male")
                                   + nemo_row("EB0_surprised_2.wav", "surprised", "EB0", "Female")
                                   + nemo_row("EB0_contempt_4.wav", "contempt", "EB0", "female")
                                   + nemo_row("KD0_fear_5.wav", "anger", "KD0", "female")
                                   + nemo_row("MK0_sadness_3.wav", "sadness", "MK0", "female"), encoding="utf-8")
    s = C.scan_nemo(root)
    assert sorted((Path(u.path).name, u.speaker, u.emotion, u.gender) for u in s.utterances) == [
        ("EB0_surprised_2.wav", "nemo:EB0", "surprise", "female"), ("KS0_anger_1.flac", "nemo:KS0", "angry", "male")]
    assert [(Path(p).name, why) for p, why in s.excluded] == [
        ("KS0_anger_1.wav", f"same clip as {root / 'samples' / 'KS0_anger_1.flac'} in another format")]
    problems = {Path(p).name: why for p, why in s.problems}
    assert problems == {
        "EB0_contempt_4.wav": "unknown emotion 'contempt' in data.tsv",
        "KD0_fear_5.wav": "data.tsv says speaker KD0, anger but the name says speaker KD0, fear",
        "XX0_fear_9.wav": "not listed in data.tsv (no row with file_id XX0_fear_9.*)",
        "data.tsv:6": f"lists MK0_sadness_3.wav but no audio file with stem MK0_sadness_3 "
                      f"(.wav/.flac/.ogg/.mp3) is under {root}",
    }
    (root / "data.tsv").unlink()
    with pytest.raises(C.CorpusError, match="no data.tsv under"):
        C.scan_nemo(root)
    (root / "data.tsv").write_text("file_id\temotion\n", encoding="utf-8")
    with pytest.raises(C.CorpusError, match=r"missing \['speaker_id', 'gender'\]"):
        C.scan_nemo(root)
    assert C.parse_spec("nemo=../shared/data/nemo") == ("nemo", "../shared/data/nemo") and "nemo" in C.ADAPTERS


def test_nemo_labels_have_rules():
    e7, e4 = get_label_set("ekman7"), get_label_set("emo4")
    assert [e7.map(c) for c in L.NEMO.values()] == list(L.NEMO.values())  # all six are ekman7 classes
    assert {n: e4.map(c) for n, c in L.NEMO.items()} == {
        "anger": "angry", "fear": None, "happiness": "happy", "neutral": "neutral", "sadness": "sad", "surprised": None}
    assert "surprise" in e4.drop and "fear" in e4.drop


def test_licences():
    assert set(C.LICENCES) == set(C.ADAPTERS)  # every corpus kind says what a model trained on it inherits
    assert C.licence_for(["emodb", "ravdess"]) == (
        "CC BY-NC-SA 4.0 (inherited from RAVDESS, Livingstone & Russo 2018): non-commercial use, attribution and "
        "share-alike + CC0-1.0 (EMO-DB as republished by audEERING)")
    nemo = C.licence_for(["nemo=../shared/data/nemo", "nemo"])
    assert nemo.startswith("CC BY-NC-SA 4.0 (inherited from nEMO)") and " + " not in nemo
    assert 'Christop, "nEMO: Dataset of Emotional Speech in Polish", LREC-COLING 2024' in nemo
    assert C.licence_for(["emodb", "mine"]) == ("CC0-1.0 (EMO-DB as republished by audEERING) + "
                                                "mine: see the corpus's own licence")
    assert C.licence_for([]) == "see training data"


def test_cremad_tess_savee(tmp_path):
    cd = make_tree(tmp_path / "crema", ["AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1002_IEO_HAP_HI.wav",
                                        "AudioWAV/1003_IEO_XYZ_HI.wav"])
    (cd / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
                                              "1002,21,Female,Caucasian,Not Hispanic\n")
    s = C.scan_cremad(cd)
    assert sorted((u.speaker, u.emotion, u.gender) for u in s.utterances) == [
        ("cremad:1001", "angry", "male"), ("cremad:1002", "happy", "female")]
    assert len(s.problems) == 1
    t = C.scan_tess(make_tree(tmp_path / "tess", ["OAF_angry/OAF_back_angry.wav", "YAF_pleasant_surprised/YAF_bar_ps.wav",
                                                 "YAF_sad/YAF_bite_Sad.wav", "other/notes.wav"]))
    assert sorted((u.speaker, u.emotion) for u in t.utterances) == [("tess:OAF", "angry"), ("tess:YAF", "sad"),
                                                                     ("tess:YAF", "surprise")]
    assert len(t.problems) == 1
    v = C.scan_savee(make_tree(tmp_path / "savee", ["AudioData/DC/a01.wav", "AudioData/KL/sa15.wav", "JE_su03.wav",
                                                   "AudioData/XX/n01.wav"]))
    assert sorted((u.speaker, u.emotion) for u in v.utterances) == [("savee:DC", "angry"), ("savee:JE", "surprise"),
                                                                     ("savee:KL", "sad")]
    assert len(v.problems) == 1


def test_iemocap(tmp_path):
    root = tmp_path / "IEMOCAP"
    make_tree(root, ["Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav",
                     "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav",
                     "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F003.wav"])
    ev = root / "Session1/dialog/EmoEvaluation"
    ev.mkdir(parents=True)
    (ev / "Ses01F_impro01.txt").write_text(
        "% header\n\n[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "[10.0 - 12.5]\tSes01F_impro01_M001\texc\t[3.0, 3.0, 3.0]\n"
        "[13.0 - 14.0]\tSes01F_impro01_M002\txxx\t[3.0, 3.0, 3.0]\n"
        "[15.0 - 16.0]\tSes01F_impro01_F004\tang\t[3.0, 3.0, 3.0]\n")
    ev2 = root / "Session2/dialog/EmoEvaluation"
    ev2.mkdir(parents=True)
    (ev2 / "Ses02M_script01_1.txt").write_text("[1.0 - 2.0]\tSes02M_script01_1_F003\tsad\t[1.0, 1.0, 1.0]\n")
    s = C.scan_iemocap(root)
    assert sorted((u.speaker, u.emotion, u.gender) for u in s.utterances) == [
        ("iemocap:Ses01F", "neutral", "female"), ("iemocap:Ses01M", "excited", "male"), ("iemocap:Ses02F", "sad", "female")]
    assert len(s.excluded) == 1 and [why for _, why in s.problems] == ["labelled in EmoEvaluation but the wav is missing"]
    assert get_label_set("emo4").map("excited") == "happy"
    folds = leave_one_session_out(s.utterances)
    assert folds == [["iemocap:Ses01F", "iemocap:Ses01M"], ["iemocap:Ses02F"]]


def test_folders_and_manifest(tmp_path):
    f = C.scan_folders(make_tree(tmp_path / "f", ["angry/spk1/a.wav", "Happiness/b.wav", "bogus/c.wav"]))
    assert sorted((u.emotion, u.speaker) for u in f.utterances) == [("angry", "folders:spk1"), ("happy", "folders:file-b")]
    assert "not an emotion label" in f.problems[0][1]
    write(tmp_path / "x.wav", harmonics(150, 0.5))
    (tmp_path / "m.csv").write_text("path,emotion,speaker,gender\nx.wav,sad,s1,female\nx.wav,sad,,female\n"
                                    "missing.wav,sad,s1,\nx.wav,meh,s1,\n")
    m = C.scan_manifest(tmp_path / "m.csv")
    assert [(u.emotion, u.speaker, u.gender) for u in m.utterances] == [("sad", "m:s1", "female")]
    assert [w.split(":")[-1] for w, _ in m.problems] == ["3", "4", "5"]
    with pytest.raises(C.CorpusError, match="KIND=PATH"):
        C.parse_spec("emodb")
    with pytest.raises(C.CorpusError, match="is not a folder"):
        C.scan_emodb(tmp_path / "nope")


def test_label_sets_have_explicit_rules():
    for ls in LABEL_SETS.values():
        for name in ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise", "boredom", "excited"):
            ls.map(name)  # every corpus label has a rule: kept, merged or dropped; never a KeyError
    e7 = get_label_set("ekman7")
    assert e7.map("calm") == "neutral" and e7.map("boredom") is None
    assert get_label_set("ravdess8").map("calm") == "calm"


@pytest.mark.parametrize("scheme", ["speakers", "loso"])
def test_splits_are_speaker_independent(scheme):
    utts = C.scan_emodb(EMODB).utterances + C.scan_ravdess(RAVDESS).utterances
    folds = make_folds(utts, scheme, 4)
    all_spk = sorted({u.speaker for u in utts})
    assert sorted(s for f in folds for s in f) == all_spk  # a partition
    for k in range(min(len(folds), 4)):
        train, dev, test = train_dev_test(utts, scheme, 4, k)
        tr, dv, te = ({u.speaker for u in x} for x in (train, dev, test))
        assert not (tr & te) and not (tr & dv) and not (dv & te)
        assert len(train) + len(dev) + len(test) == len(utts)
    if scheme == "speakers":  # every fold mixes corpora and genders
        for f in speaker_folds(utts, 4):
            assert {s.split(":")[0] for s in f} == {"emodb", "ravdess"}
