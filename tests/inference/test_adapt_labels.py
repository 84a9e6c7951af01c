"""`adapt --labels labels.csv`: the review page's labels in place of <LABEL>/ folders."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.files import cli_exit, one_error, tone, write_wav

from leak_lightning.checkpoint.io import read_checkpoint
from leak_lightning.inference import adapt
from leak_lightning.inference.labels import read_labels

ODD = 'S9,north "main".wav'  # a comma and quotes: quoted in the CSV


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def labels_csv(path: Path, rows: list[tuple[str, str, str]], header=("path", "audio_digest", "label"),
               newline: str = "\r\n") -> Path:
    """A labels.csv as the page writes it (RFC 4180 quoting)."""
    out = io.StringIO()
    csv.writer(out, lineterminator=newline).writerows([header, *rows])
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    return path


@pytest.fixture(scope="module")
def adapted(trained_run, site, tmp_path_factory) -> dict:
    """One site adapted twice: from its <LABEL>/ folders (the reference) and, through the CLI, from a labels.csv
    naming the same recordings laid out as predict reads them (plus unsure rows, one name with a comma)."""
    from leak_lightning.cli import main

    tmp = tmp_path_factory.mktemp("labels")
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    reference = adapt.adapt_checkpoint(str(ckpt), str(site), "ref", output=str(tmp / "ref.ckpt"), folds=3)
    root = tmp / "field"
    rows = []
    # in the reference's order: the folds are dealt by position, so the same order deals the same folds
    for i, row in enumerate(reference["rows"]):
        source = Path(row["path"])
        name = ODD if i == 1 else source.name
        target = root / f"night{i % 2}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        rows.append((f"night{i % 2}/{name}", sha16(target), "leak" if source.parent.name == "LEAK" else "not leak"))
    # reviewed but not decided: never used (the second is not even there)
    unsure = write_wav(root / "night0" / "unsure.wav", tone(500, 10, 4096))
    rows[3:3] = [("night0/unsure.wav", sha16(unsure), "unsure"), ("night9/gone.wav", "0" * 16, "unsure")]
    labels = labels_csv(tmp / "labels.csv", rows)
    with pytest.raises(SystemExit) as exit_:
        main(["adapt", "--ckpt_path", str(ckpt), "--input", str(root), "--labels", str(labels), "--site", "lab",
              "--output", str(tmp / "lab.ckpt"), "--folds", "3"])
    assert exit_.value.code == 0
    return {"reference": reference, "labels": labels, "root": root, "rows": rows, "ckpt": ckpt, "tmp": tmp,
            "report": read_checkpoint(tmp / "lab.ckpt")[0]["leak_lightning"]["site"]}


def test_labels_adapt_as_label_folders_do(adapted):
    ref, site = adapted["reference"], adapted["report"]
    report = site["report"]
    for key in ("recordings", "leaks", "folds", "kept_base_rule", "threshold", "calibration", "before",
                "after_cross_validated", "rule", "base_rule"):
        assert report[key] == ref[key], key
    assert report["recordings"] == 12 and report["leaks"] == 4
    assert [r["fold"] for r in report["rows"]] == [r["fold"] for r in ref["rows"]]
    assert [r["score"] for r in report["rows"]] == pytest.approx([r["score"] for r in ref["rows"]])
    expected = [sha16(Path(r["path"])) for r in ref["rows"]]
    assert site["digests"] == expected and sha16(adapted["root"] / "night0" / "unsure.wav") not in expected
    assert [r["label"] for r in report["rows"]] == [
        "LEAK" if Path(r["path"]).parent.name == "LEAK" else "not leak" for r in ref["rows"]]
    assert str(adapted["root"] / "night1" / ODD) in [r["path"] for r in report["rows"]]


def test_the_report_names_the_labels_file(adapted):
    labels = adapted["labels"]
    about = {"path": str(labels), "sha256": hashlib.sha256(labels.read_bytes()).hexdigest(), "rows": 14, "unsure": 2}
    assert adapted["report"]["labels"] == about and adapted["report"]["report"]["labels"] == about
    import json

    beside = json.loads((adapted["tmp"] / "lab_adapt_report.json").read_text())
    assert beside["labels"] == about and beside["site"] == "lab"


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_rows_are_read_as_rfc4180_with_either_line_ending(adapted, tmp_path, newline, ll_records):
    root, rows = adapted["root"], adapted["rows"]
    text = newline.join(["path,audio_digest,label", *(
        ",".join(f'"{f.replace(chr(34), 2 * chr(34))}"' if any(c in f for c in ',"') else f for f in row)
        for row in rows), ""])
    (tmp_path / "l.csv").write_bytes(text.encode())
    assert '"night1/S9,north ""main"".wav"' in text  # written by hand: quoted, its quotes doubled
    pairs = read_labels(tmp_path / "l.csv", root, "LEAK")
    assert pairs == [(root / p, "LEAK" if label == "leak" else "not leak") for p, _, label in rows
                     if label != "unsure"]
    assert [r.getMessage() for r in ll_records] == [f"2 of 14 rows of {tmp_path / 'l.csv'} are labelled unsure: "
                                                    "not used"]


def test_a_link_that_stays_under_input_is_followed(tmp_path):
    real = write_wav(tmp_path / "in" / "a" / "real.wav", tone(300, 2, 4096))
    os.symlink("a/real.wav", tmp_path / "in" / "link.wav")
    labels = labels_csv(tmp_path / "l.csv", [("link.wav", sha16(real), "leak")], newline="\n")
    assert read_labels(labels, tmp_path / "in", "LEAK") == [(tmp_path / "in" / "link.wav", "LEAK")]


def test_a_not_leak_recording_is_in_a_name_split_under_any_other_class():
    def key(name: str, label: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{name}\0{label}".encode(), digest_size=8).digest(), "little")

    det = SimpleNamespace(model=SimpleNamespace(class_names=["BACKGROUND", "LEAK", "NORMAL"],
                                                hparams=SimpleNamespace(leak_class_name="LEAK")))
    trained = ("name", {key("a.wav", "NORMAL"), key("b.wav", "LEAK")})
    assert adapt._in_training(det, Path("x/a.wav"), "not leak", trained)
    assert not adapt._in_training(det, Path("x/b.wav"), "not leak", trained)  # there as a leak, not as another
    assert adapt._in_training(det, Path("x/b.wav"), "LEAK", trained)
    assert not adapt._in_training(det, Path("x/a.wav"), "LEAK", trained)


def _bad(adapted, tmp_path, case: str) -> tuple[list, list[str]]:
    """(labels.csv rows, extra CLI options) for one bad input; its input folder under tmp_path/in."""
    root, rows = adapted["root"], adapted["rows"]
    good = rows[0]
    outside = tmp_path / "outside.wav"
    shutil.copy2(root / good[0], outside)
    (tmp_path / "in").mkdir()
    if case == "link":
        os.symlink(outside, tmp_path / "in" / "link.wav")
        return [("link.wav", good[1], "leak")], []
    if case == "linked folder":
        os.symlink(tmp_path, tmp_path / "in" / "up")
        return [("up/outside.wav", good[1], "leak")], []
    shutil.copytree(root, tmp_path / "in", dirs_exist_ok=True)
    return {
        "label": [good, (rows[1][0], rows[1][1], "Leak")],
        "absolute": [(str(outside), good[1], "leak")],
        "dotdot": [("night0/../../outside.wav", good[1], "leak")],
        "missing": [("night0/nowhere.wav", good[1], "leak")],
        "digest": [(good[0], "0123456789abcdef", good[2])],
        "no digest": [(good[0], "", good[2])],
        "twice": [good, rows[1], (good[0], good[1], "unsure")],
        "fields": [good, (good[0], good[1])],
        "finetune": [good],
        "unlabelled": [good],
        "few": [r for r in rows if r[2] == "leak"][:2] + [r for r in rows if r[2] == "not leak"][:3],
    }[case], {"finetune": ["--finetune_steps", "3"], "unlabelled": ["--unlabelled", "true"]}.get(case, [])


@pytest.mark.parametrize("case, fragment", [
    ("label", "l.csv line 3: label 'Leak' is not one of leak, not leak, unsure; correct it or remove the row"),
    ("absolute", "l.csv line 2: '{tmp}/outside.wav' is not a path relative to --input"),
    ("dotdot", "l.csv line 2: 'night0/../../outside.wav' goes up out of --input"),
    ("link", "l.csv line 2: 'link.wav' is a link to {tmp}/outside.wav, outside --input {tmp}/in; labels.csv can "
             "only name recordings under --input"),
    ("linked folder", "l.csv line 2: 'up/outside.wav' is a link to {tmp}/outside.wav, outside --input"),
    ("missing", "l.csv line 2: 'night0/nowhere.wav' was not found under --input {tmp}/in; give as --input the "
                "folder the predictions CSV's paths are relative to"),
    ("digest", "the recording changed since it was reviewed; review it again or remove the row"),
    ("no digest", "l.csv line 2: '{good}' has no audio digest (the review could not read it); review it again or "
                  "remove the row"),
    ("twice", "l.csv lines 2 and 4: '{good}' is labelled both '{label}' and 'unsure'; keep one row for it"),
    ("fields", "l.csv line 3: 2 fields, not 3 (path,audio_digest,label)"),
    ("finetune", "--finetune_steps 3 with --labels: labels.csv says leak or not leak, not which class"),
    ("unlabelled", "with --unlabelled true: give one of them"),
    ("few", "l.csv: 2 LEAK and 3 other recording(s) of the site were scored; adapting needs at least 3 of each to "
            "cross-validate the threshold (label 1 more LEAK and 0 more other"),
])
def test_a_bad_labels_file_is_one_line(adapted, tmp_path, capsys, case, fragment):
    rows, extra = _bad(adapted, tmp_path, case)
    labels = labels_csv(tmp_path / "l.csv", rows)
    code, err = cli_exit(capsys, "adapt", "--ckpt_path", adapted["ckpt"], "--input", tmp_path / "in", "--labels",
                         labels, "--site", "x", "--output", tmp_path / "x.ckpt", *extra)
    line = one_error(code, err)
    assert fragment.format(tmp=tmp_path, good=rows[0][0], label=rows[0][2]) in line, line
    if case == "digest":
        assert (f"l.csv line 2: '{rows[0][0]}': its audio digest is {sha16(tmp_path / 'in' / rows[0][0])}, "
                "labels.csv says 0123456789abcdef") in line
    assert not (tmp_path / "x.ckpt").exists()


@pytest.mark.parametrize("header, fragment", [
    (("path", "digest", "label"), "l.csv line 1: the header is 'path,digest,label', not 'path,audio_digest,label'"),
    (None, "l.csv line 1: the header is '', not 'path,audio_digest,label'"),
])
def test_a_wrong_header_or_a_missing_file_is_one_line(adapted, tmp_path, capsys, header, fragment):
    if header is None:
        (tmp_path / "l.csv").write_bytes(b"")
    else:
        labels_csv(tmp_path / "l.csv", [adapted["rows"][0]], header=header)
    args = ["adapt", "--ckpt_path", adapted["ckpt"], "--input", adapted["root"], "--site", "x", "--output",
            tmp_path / "x.ckpt", "--labels"]
    assert fragment in one_error(*cli_exit(capsys, *args, tmp_path / "l.csv"))
    assert (f"--labels {tmp_path}/none.csv: no such file; export labels.csv from the review page"
            in one_error(*cli_exit(capsys, *args, tmp_path / "none.csv")))
