"""`adapt`: a checkpoint's decision rule re-fitted to a new site, measured by cross-validation."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.files import cli_exit, one_error
from synthetic import make_dataset

from leak_lightning import LeakDetector
from leak_lightning.checkpoint.io import read_checkpoint
from leak_lightning.inference import adapt
from leak_lightning.models.decision import DecisionOptions, DecisionRule
from leak_lightning.runtime.fileio import file_digest


def test_folds_deal_leaks_and_others_round_the_folds():
    truth = torch.tensor([True] * 5 + [False] * 7)
    fold = adapt.folds_of(truth, 3, seed=1)
    assert [int((fold[truth] == k).sum()) for k in range(3)] == [2, 2, 1]
    assert [int((fold[~truth] == k).sum()) for k in range(3)] == [3, 2, 2]
    assert torch.equal(fold, adapt.folds_of(truth, 3, seed=1)) and not torch.equal(fold, adapt.folds_of(truth, 3, 2))


def test_no_recording_is_decided_by_a_rule_fitted_on_it():
    torch.manual_seed(0)
    windows = [torch.rand(4) for _ in range(9)]
    truth = torch.tensor([True, False, True, False, True, False, False, True, False])
    fold = adapt.folds_of(truth, 3, seed=0)
    seen = []

    class Spy(DecisionRule):
        def fit(self, w, t):
            seen.append({id(x) for x in w})
            return super().fit(w, t)

        def decide(self, w):
            assert not {id(x) for x in w} & seen[-1]  # held out from this rule's fit
            return super().decide(w)

    decided = adapt.cross_validated(windows, truth, fold, lambda: Spy(DecisionOptions()))
    assert len(seen) == 3 and decided.shape == truth.shape
    for k in range(3):  # each rule saw exactly the other folds
        assert seen[k] == {id(w) for w, f in zip(windows, fold) if f != k}


@pytest.mark.parametrize("before, after, kept", [(0.8, 0.7, True), (0.8, 0.8, True), (0.8, 0.9, False),
                                                  (float("nan"), 0.5, False), (0.5, float("nan"), True)])
def test_the_base_rule_stays_unless_adapting_is_better(before, after, kept):
    assert adapt.keeps_base_rule(before, after) is kept


def test_adapt_writes_a_checkpoint_for_the_site(trained_run, site, tmp_path, capsys):
    base = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "d.ckpt"
    report = adapt.adapt_checkpoint(str(base), str(site), "district-9", output=str(out), folds=3)
    ckpt, _ = read_checkpoint(out)  # its integrity digest holds
    s = ckpt["leak_lightning"]["site"]
    assert (s["name"], s["recordings"], s["leaks"], s["folds"]) == ("district-9", 12, 4, 3)
    assert s["base_checkpoint"]["sha256"] == file_digest(base) and len(s["digests"]) == 12
    assert sorted(s["digests"]) == sorted(file_digest(p)[:16] for p in site.rglob("*.wav"))
    assert s["before"] == report["before"] and s["after_cross_validated"] == report["after_cross_validated"]
    threshold = float(ckpt["state_dict"]["decision.threshold"])
    assert ckpt["leak_lightning"]["threshold"] == pytest.approx(threshold) == report["threshold"]
    assert json.loads((tmp_path / "d_adapt_report.json").read_text())["site"] == "district-9"
    # the "before" figures are the base checkpoint's own answers on the site's recordings
    det = LeakDetector.from_checkpoint(base, device="cpu")
    answers = [(det.predict(p).leak, p.parent.name == "LEAK") for p in site.rglob("*.wav")]
    assert s["before"]["found"] == sum(a and t for a, t in answers)
    assert s["before"]["false_alarms"] == sum(a and not t for a, t in answers)
    adapted = LeakDetector.from_checkpoint(out, device="cpu")
    assert adapted.site["name"] == "district-9"
    # the report names the rule before and after by its reading (state), as the checkpoints hold them
    assert report["base_rule"] == det.model.decision.describe() == s["base_rule"]
    assert report["rule"] == adapted.model.decision.describe() == s["rule"]
    assert report["rule"]["threshold"] == pytest.approx(threshold)
    if not s["kept_base_rule"]:  # the adapted rule is the one fitted on all the site's recordings
        rule = DecisionRule(det.model.decision.options)
        rule.fit([det.leak_windows(p)[1] for p in sorted(site.rglob("*.wav"))],
                 torch.tensor([p.parent.name == "LEAK" for p in sorted(site.rglob("*.wav"))]))
        assert threshold == pytest.approx(float(rule.threshold))


def test_adapting_again_on_the_recordings_a_site_checkpoint_was_fitted_on_is_said(trained_run, site, tmp_path,
                                                                                  ll_records):
    """An adapted checkpoint's rule scored on its own fitting recordings is not a held-out 'before': counted, said."""
    import shutil

    base = trained_run / "checkpoints" / "best.ckpt"
    first = adapt.adapt_checkpoint(str(base), str(site), "north", output=str(tmp_path / "n.ckpt"), folds=3)
    assert first["reused_from_base_site"] == 0  # fit's checkpoint was fitted on no site recording
    half = tmp_path / "half"  # 5 of the 12 recordings again (3 leaks, 2 others), 3 the first one never heard
    for label, take in (("LEAK", 3), ("NORMAL", 2)):
        (half / label).mkdir(parents=True)
        for p in sorted((site / label).glob("*.wav"))[:take]:
            shutil.copy2(p, half / label / p.name)
    unheard = tmp_path / "unheard"
    make_dataset(unheard, layout="pool", labels=("BACKGROUND",), files_per_label=3, sensors_per_label=1, seed=77)
    shutil.copytree(unheard / "BACKGROUND", half / "BACKGROUND")
    ll_records.clear()
    again = adapt.adapt_checkpoint(str(tmp_path / "n.ckpt"), str(half), "north-2", output=str(tmp_path / "n2.ckpt"),
                                   folds=3)
    assert again["reused_from_base_site"] == 5
    ckpt, _ = read_checkpoint(tmp_path / "n2.ckpt")
    assert ckpt["leak_lightning"]["site"]["reused_from_base_site"] == 5
    said = [r.getMessage() for r in ll_records if "already adapted on" in r.getMessage()]
    assert len(said) == 1 and "5 of these 8 recordings" in said[0] and "'north'" in said[0]
    assert str(base) in said[0]  # the checkpoint to adapt instead
    # a checkpoint adapted without labels fitted no rule on them: nothing to say
    adapt.adapt_checkpoint(str(base), str(site), "quiet", output=str(tmp_path / "q.ckpt"), unlabelled=True)
    assert adapt.adapt_checkpoint(str(tmp_path / "q.ckpt"), str(site), "q2", output=str(tmp_path / "q2.ckpt"),
                                  folds=3)["reused_from_base_site"] == 0


def test_a_worse_adaptation_keeps_the_base_rule(trained_run, site, tmp_path, monkeypatch, ll_records):
    base = trained_run / "checkpoints" / "best.ckpt"
    monkeypatch.setattr(adapt, "cross_validated", lambda w, truth, fold, make, rescore=None: torch.zeros_like(truth))
    report = adapt.adapt_checkpoint(str(base), str(site), "worse", output=str(tmp_path / "w.ckpt"), folds=3)
    ckpt, _ = read_checkpoint(tmp_path / "w.ckpt")
    base_ckpt, _ = read_checkpoint(base)
    assert report["before"]["found"] > 0  # the base rule finds leaks here: an adapted rule finding none is worse
    assert report["kept_base_rule"] and ckpt["leak_lightning"]["site"]["kept_base_rule"]
    assert torch.equal(ckpt["state_dict"]["decision.threshold"], base_ckpt["state_dict"]["decision.threshold"])
    assert any("the base threshold and calibration are kept" in r.getMessage() for r in ll_records)


@pytest.mark.parametrize("keep, fragment", [
    ({"LEAK": 2, "NORMAL": 4}, "2 LEAK and 4 other recording(s) of the site were scored; adapting needs at least 3 "
                               "of each to cross-validate the threshold (record 1 more LEAK and 0 more other"),
    ({"LEAK": 4, "FOO": 4}, "label folder(s) ['FOO'] are not classes of the checkpoint"),
    ({}, "no <LABEL>/ folders in it; put the site's recordings in folders named after the checkpoint's classes"),
    ({"LEAK": 4, "NORMAL": 4, "BACKGROUND": 1}, "is the same file as"),  # BACKGROUND/ holds a copy of a NORMAL one
])
def test_too_few_recordings_or_a_foreign_label_is_one_line(trained_run, site, tmp_path, capsys, keep, fragment):
    import shutil

    (tmp_path / "in").mkdir()
    shutil.copy(next(site.rglob("*.wav")), tmp_path / "in" / "loose.wav")  # not in a label folder: not used
    for label, n in keep.items():
        source = site / ("NORMAL" if label in ("FOO", "BACKGROUND") else label)
        (tmp_path / "in" / label).mkdir()
        for p in sorted(source.glob("*.wav"))[:n]:
            shutil.copy(p, tmp_path / "in" / label / p.name)
    code, err = cli_exit(capsys, "adapt", "--ckpt_path", trained_run / "checkpoints/best.ckpt", "--input",
                         tmp_path / "in", "--site", "x", "--output", tmp_path / "x.ckpt")
    assert fragment in one_error(code, err)
    assert not (tmp_path / "x.ckpt").exists()


def test_an_existing_output_needs_overwrite(trained_run, site, tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"mine")
    code, err = cli_exit(capsys, "adapt", "--ckpt_path", trained_run / "checkpoints/best.ckpt", "--input", site,
                         "--site", "x", "--output", tmp_path / "x.ckpt")
    assert "exists: pass --overwrite true" in one_error(code, err)
    assert (tmp_path / "x.ckpt").read_bytes() == b"mine"


def test_unlabelled_adaptation_gives_the_norms_the_sites_statistics_and_nothing_else(trained_run, site, tmp_path):
    from leak_lightning.audio.decode import WindowReader

    base = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "u.ckpt"
    report = adapt.adapt_checkpoint(str(base), str(site), "quiet-street", output=str(out), unlabelled=True)
    before, _ = read_checkpoint(base)
    after, _ = read_checkpoint(out)  # integrity holds
    changed = {k for k, v in after["state_dict"].items()
               if not torch.equal(v, before["state_dict"].get(k, before["state_dict"].get(k.split(".", 1)[-1])))}
    assert changed and all(k.startswith("net.") and k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                                              "num_batches_tracked") for k in changed)
    # the input norm by hand: the site's segments in batches mixed across recordings (1024 by default; here all
    # 960 segments in one): their mean and unbiased variance, the between-recording variance included
    det = LeakDetector.from_checkpoint(base, device="cpu")
    x = torch.cat([det.model.segments_of(torch.from_numpy(w[~s])).float().reshape(-1)
                   for path in sorted(site.rglob("*.wav")) for w, s in WindowReader(path, det.spec)])
    assert x.numel() == 12 * 80 * 64  # 12 recordings, 80 segments each, 64 mel bins: one batch
    state = after["state_dict"]
    assert float(state["net.norm.running_mean"]) == pytest.approx(float(x.mean()), rel=1e-4)
    assert float(state["net.norm.running_var"]) == pytest.approx(float(x.var()), rel=1e-3)
    one_each = torch.stack([x.reshape(12, -1)[i].var() for i in range(12)]).mean()  # batches of one recording
    assert abs(float(state["net.norm.running_var"]) - float(one_each)) > 0.01 * float(one_each)
    s = after["leak_lightning"]["site"]
    assert s["unlabelled"] and s["recordings"] == 12 and report["decided_leak"] == s["decided_leak"]
    adapted = LeakDetector.from_checkpoint(out, device="cpu")
    assert "without labels" in adapted.model.site_line()


@pytest.mark.parametrize("kept", [False, True])
def test_finetuning_changes_only_the_head_and_never_on_the_recordings_it_decides(trained_run, site, tmp_path,
                                                                                 monkeypatch, kept):
    base = trained_run / "checkpoints" / "best.ckpt"
    monkeypatch.setattr(adapt, "keeps_base_rule", lambda *args, **kw: kept)  # both outcomes, whatever the data
    trained_on = []
    real = adapt.finetune_head
    monkeypatch.setattr(adapt, "finetune_head", lambda model, recs, steps, seed: (
        trained_on.append({r.path for r in recs}), real(model, recs, steps, seed))[1])
    decided_with = []
    real_refit = adapt.refit_rule

    def spy(*args, **kw):
        result = real_refit(*args, **kw)
        decided_with.append(result[4])  # the folds
        return result

    monkeypatch.setattr(adapt, "refit_rule", spy)
    report = adapt.adapt_checkpoint(str(base), str(site), "ft", output=str(tmp_path / "f.ckpt"), folds=3,
                                    finetune_steps=3)
    fold = decided_with[0]
    paths = [r["path"] for r in report["rows"]]  # in the order the folds were dealt
    for k in range(3):  # fold k's head was fine-tuned on the other folds' recordings only
        assert {str(p) for p in trained_on[k]} == {p for p, f in zip(paths, fold.tolist()) if f != k}
    before, _ = read_checkpoint(base)
    after, _ = read_checkpoint(tmp_path / "f.ckpt")
    changed = {k for k in after["state_dict"] if k.startswith("net.")
               and not torch.equal(after["state_dict"][k], before["state_dict"][k])}
    assert report["kept_base_rule"] is kept
    if kept:
        assert not changed
        assert torch.equal(after["state_dict"]["decision.threshold"], before["state_dict"]["decision.threshold"])
    else:
        assert changed and all(k.startswith("net.head.") for k in changed)
        assert len(trained_on) == 4 and len(trained_on[-1]) == 12  # then once more on all of them
        # the rule is fitted on the fine-tuned network's scores, not the base network's
        det = LeakDetector.from_checkpoint(tmp_path / "f.ckpt", device="cpu")
        recordings = sorted(site.rglob("*.wav"))
        rule = DecisionRule(det.model.decision.options)
        truth = torch.tensor([p.parent.name == "LEAK" for p in recordings])
        rule.fit([det.leak_windows(p)[1] for p in recordings], truth)
        assert float(after["state_dict"]["decision.threshold"]) == pytest.approx(float(rule.threshold))
    assert after["leak_lightning"]["site"]["finetune_steps"] == 3


def test_a_tie_is_adapted_only_when_asked():
    assert adapt.keeps_base_rule(0.8, 0.8, ties="adapt") is False and adapt.keeps_base_rule(0.8, 0.79, "adapt")


def test_a_copy_under_the_same_label_is_used_once(trained_run, site, tmp_path, ll_records):
    import shutil

    shutil.copytree(site, tmp_path / "in")
    first = sorted((tmp_path / "in" / "LEAK").glob("*.wav"))[0]
    shutil.copy(first, first.with_name("copy.wav"))
    report = adapt.adapt_checkpoint(str(trained_run / "checkpoints/best.ckpt"), str(tmp_path / "in"), "dup",
                                    output=str(tmp_path / "d.ckpt"), folds=3)
    assert report["recordings"] == 12 and [s["status"] for s in report["skipped"]] == [
        f"the same file as {first}"]


@pytest.mark.parametrize("device", ["gpu", "cuda"])
def test_an_impossible_device_is_one_line(trained_run, site, tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = cli_exit(capsys, "adapt", "--ckpt_path", trained_run / "checkpoints/best.ckpt", "--input", site,
                         "--site", "x", "--output", tmp_path / "x.ckpt", "--device", device)
    assert f"--device {device}: use auto, cpu, or cuda on a machine with CUDA" in one_error(code, err)


def test_the_same_seed_fine_tunes_the_same_head(trained_run, site):
    det = LeakDetector.from_checkpoint(trained_run / "checkpoints/best.ckpt", device="cpu")
    paths = sorted(site.rglob("*.wav"))[:4]
    recordings = [adapt.SiteRecording(p, p.parent.name, p.parent.name == "LEAK", torch.zeros(1), "",
                                      adapt.site_segments(det, p)) for p in paths]
    base = {k: v.clone() for k, v in det.model.net.head.state_dict().items()}
    heads = []
    for _ in range(2):
        det.model.net.head.load_state_dict(base)
        torch.manual_seed(123 + len(heads))  # whatever the global RNG holds, the seed decides
        adapt.finetune_head(det.model, recordings, steps=3, seed=7)
        heads.append({k: v.clone() for k, v in det.model.net.head.state_dict().items()})
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in base)
    assert any(not torch.equal(heads[0][k], base[k]) for k in base)


def test_norms_average_equal_batches(trained_run, site):
    from leak_lightning.audio.decode import WindowReader

    det = LeakDetector.from_checkpoint(trained_run / "checkpoints/best.ckpt", device="cpu")
    paths = sorted(site.rglob("*.wav"))
    n = adapt.reestimate_norms(det, paths, batch=400)  # 960 segments: 3 batches of 320, not 400 + 400 + 160
    x = torch.cat([det.model.segments_of(torch.from_numpy(w[~s])).float().reshape(-1)
                   for path in paths for w, s in WindowReader(path, det.spec)])
    assert n == 960
    assert float(det.model.net.norm.running_mean) == pytest.approx(float(x.mean()), rel=1e-6, abs=1e-6)


def test_a_site_checkpoint_predicts_beside_itself_not_over_the_base_predictions(trained_run, site, tmp_path):
    import shutil

    from leak_lightning.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    adapt.adapt_checkpoint(str(run / "checkpoints/best.ckpt"), str(site), "north", folds=3)
    assert (run / "sites" / "north.ckpt").is_file()  # the default place
    (run / "predictions.csv").write_text("the base model's answers\n")
    main(["predict", "--ckpt_path", str(run / "sites" / "north.ckpt"), "--data.predict_path", str(site / "LEAK")])
    assert (run / "predictions.csv").read_text() == "the base model's answers\n"
    rows = (run / "sites" / "north_predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list((site / "LEAK").glob("*.wav")))  # a header and one row a recording
    assert (run / "sites" / "north_predictions_sensors.csv").is_file()


def test_a_sites_segments_are_the_ones_the_builder_stores(small_h5, trained_run):
    """What adapt fine-tunes on and predict scores is, bit for bit, what fit trained on: the builder's float16."""
    import h5py

    from leak_lightning.data import schema

    det = LeakDetector.from_checkpoint(trained_run / "checkpoints" / "best.ckpt", device="cpu")
    with h5py.File(small_h5["test"], "r") as f:
        stored, paths = f[schema.SEGMENTS][:3], [p.decode() for p in f[schema.FILE_PATHS][:3]]
    wav = small_h5["test"].parent.parent / "wav"
    for row, path in zip(stored, paths):  # paths relative to the build's input
        mine = adapt.site_segments(det, wav / path)
        assert mine.dtype == torch.float16
        assert torch.equal(mine.reshape(row.shape), torch.from_numpy(row)), path
