"""One translator from an exception to (one line, exit status) for every subcommand; export on the jsonargparse
family (`--config`, underscore flags, the old spellings accepted with a note)."""

from __future__ import annotations

import shutil
import signal
from argparse import ArgumentError

import pytest
from helpers.files import cli_exit, one_error

from leak_lightning.cli import modern_flags
from leak_lightning.cli.errors import EXIT_INPUT, EXIT_SIGNAL, EXIT_USAGE, run_stopped, translate
from leak_lightning.runtime.logs import parse_bytes

WORKER = ("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
          '  File "x.py", line 3, in f\n    raise ValueError(...)\nValueError: a.h5: row 7 is damaged; rebuild it')
HELP = "; see `python -m leak_lightning {} --help` for the options"
NO_SPACE = "No space left on device"

# exception, command, keyword arguments → the line and the exit status a user sees (written out by hand)
TABLE = [
    (ArgumentError(None, "unrecognized arguments: --batch_sise 4"), "build", {},
     "unrecognized arguments: --batch_sise 4" + HELP.format("build"), 2),
    (ArgumentError(None, 'Parser key "trainer.max_epochs":\n  Expected a <int>\n  Given value: many'), "fit", {},
     'Parser key "trainer.max_epochs": Expected a <int> (Given value: many)' + HELP.format("fit"), 2),
    (ValueError("log level='LOUD' is not a valid level"), "adapt", {"parsing": True},
     "log level='LOUD' is not a valid level" + HELP.format("adapt"), 2),
    (ValueError("a.h5: not a dataset; rebuild it"), "fit", {}, "a.h5: not a dataset; rebuild it", 2),
    (FileNotFoundError("in/: no such folder"), "build", {}, "in/: no such folder", 2),
    (FileExistsError("out/ holds a dataset; pass --overwrite true"), "build", {},
     "out/ holds a dataset; pass --overwrite true", 2),
    (ValueError(WORKER), "predict", {}, "a.h5: row 7 is damaged; rebuild it", 2),
    (KeyboardInterrupt(), "build", {}, "build interrupted (SIGINT): temporary files removed, existing outputs "
     "untouched", 130),
    (KeyboardInterrupt("SIGTERM"), "build", {}, "build interrupted (SIGTERM): temporary files removed, existing "
     "outputs untouched", 143),
    (KeyboardInterrupt("SIGTERM"), "adapt", {}, "adapt interrupted (SIGTERM): its temporary files were removed; an "
     "earlier --output stays unless the new checkpoint was already in place", 143),
    (OSError(28, NO_SPACE, "/site/adapted.ckpt"), "adapt", {},
     f"adapt stopped: /site/adapted.ckpt: {NO_SPACE}; the base checkpoint is untouched", 2),
    (RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"), "adapt", {},
     "adapt stopped: CUDA out of memory.; the base checkpoint is untouched", 2),
    (OSError(28, NO_SPACE), "build", {"output": "/data/h5"},
     f"/data/h5: {NO_SPACE} while writing the dataset; nothing was replaced (an earlier dataset there is intact) "
     "and the temporary files were removed; free space or choose another --output", 2),
]


@pytest.mark.parametrize("err, command, kw, line, status", TABLE)
def test_each_exception_kind_has_its_line_and_status(err, command, kw, line, status):
    assert translate(err, command, **kw) == (line, status)


@pytest.mark.parametrize("err, command", [(RuntimeError("a bug"), "fit"), (KeyboardInterrupt(), "export"),
                                          (TypeError("a bug"), "build"), (OSError(5, "I/O error"), "export")])
def test_what_no_command_handles_stays_a_traceback(err, command):
    assert translate(err, command) is None


def test_the_exit_statuses_follow_the_shell():
    assert EXIT_USAGE == EXIT_INPUT == 2
    assert EXIT_SIGNAL == {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM} == {"SIGINT": 130,
                                                                                               "SIGTERM": 143}


def test_our_own_check_wrapped_by_the_parser_is_shown_not_its_wrapper():
    try:
        parse_bytes("lots", "--data.max_cache_bytes")  # raised inside the package
    except ValueError as ours:
        try:
            raise ValueError("Problem with given class_path 'LeakDataModule'") from ours
        except ValueError as wrapped:
            line = "--data.max_cache_bytes='lots': not a size; write e.g. 4GB, 512MB or a number of bytes"
            assert translate(wrapped, "fit") == (line, 2)
            assert translate(wrapped, "") == (line, 2)  # no subcommand named yet: still a LightningCLI one
            assert translate(wrapped, "build") == ("Problem with given class_path 'LeakDataModule'", 2)
    foreign = ValueError("wrapper")
    foreign.__cause__ = ValueError("not raised by the package")  # no traceback in leak_lightning
    assert translate(foreign, "fit") == ("wrapper", 2)


@pytest.mark.parametrize("err, world, line", [
    (RuntimeError("[/src/gloo/pair.cc:561] Connection closed by peer [10.0.0.2]:5. This is typically caused by a "
                  "crash"), 2, "a DDP rank stopped, so the run cannot go on (RuntimeError: Connection closed by peer "
                               "[10.0.0.2]:5); resume it"),
    (OSError(28, NO_SPACE, "/run/checkpoints/last.ckpt"), 1, f"/run/checkpoints/last.ckpt: {NO_SPACE}; resume it"),
    (OSError("lost mount"), 1, "OSError: lost mount; resume it"),
    (FileNotFoundError("a.h5: not found; build it first"), 1, None),  # our own check: printed as it is
    (RuntimeError("a bug"), 1, None),
])
def test_what_stops_a_run(err, world, line):
    got = run_stopped(err, "fit", world, "; resume it")
    assert (None if got is None else (type(got), str(got))) == (None if line is None else (ValueError, line))


NOTE = "the old spelling is accepted until 0.5"


@pytest.mark.parametrize("argv, want, notes", [
    (["--ckpt_path", "a", "--with-frontend", "--output", "o"], ["--ckpt_path", "a", "--with_frontend", "true",
                                                               "--output", "o"],
     [f"--with-frontend is now --with_frontend true; {NOTE}"]),
    (["--with_frontend"], ["--with_frontend", "true"], [f"--with_frontend without a value is now --with_frontend "
                                                        f"true; {NOTE}"]),
    (["--with-frontend=false"], ["--with_frontend=false"], [f"--with-frontend is now --with_frontend; {NOTE}"]),
    (["--with-frontend", "false"], ["--with_frontend", "false"], [f"--with-frontend is now --with_frontend; {NOTE}"]),
    (["--with_frontend", "false", "--format", "onnx"], ["--with_frontend", "false", "--format", "onnx"], []),
])
def test_old_export_spellings_are_translated_with_a_note(argv, want, notes):
    assert modern_flags("export", argv) == (want, notes)
    assert modern_flags("build", argv) == (argv, [])  # only export had them


@pytest.fixture
def ckpt(trained_run, tmp_path):
    dst = tmp_path / "run" / "checkpoints" / "best.ckpt"
    dst.parent.mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", dst)
    return dst


def export_exit(capsys, *args) -> tuple[int, str]:
    return cli_exit(capsys, "export", *args)


def test_the_old_export_spelling_works_and_says_the_new_one(ckpt, tmp_path, capsys):
    out = tmp_path / "old"
    code, err = export_exit(capsys, "--ckpt_path", ckpt, "--format", "torchscript", "--with-frontend", "--output", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "best_network.pt", "best_with_frontend.pt"]
    warnings = [line for line in err.splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1 and warnings[0].endswith(f"--with-frontend is now --with_frontend true; {NOTE}")


def test_export_takes_a_config_file(ckpt, tmp_path, capsys):
    out = tmp_path / "from_yaml"
    config = tmp_path / "export.yaml"
    config.write_text(f"ckpt_path: {ckpt}\nformat: torchscript\nwith_frontend: true\noutput: {out}\n")
    code, err = export_exit(capsys, "--config", config)
    assert code == 0 and "[WARNING]" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "best_network.pt", "best_with_frontend.pt"]


def test_a_bad_export_value_from_a_config_file_is_one_line(ckpt, tmp_path, capsys):
    config = tmp_path / "export.yaml"
    config.write_text(f"ckpt_path: {ckpt}\nformat: tflite\n")
    line = one_error(*export_exit(capsys, "--config", config))
    assert 'Parser key "format"' in line and "tflite" in line and line.endswith(HELP.format("export"))
    assert not (ckpt.parent.parent / "export").exists()
