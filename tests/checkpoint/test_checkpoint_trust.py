"""A checkpoint is data, never code: every load goes through torch's safe unpickler, and a checkpoint whose
unpickling would run something is refused in one line naming the file and what it holds; nothing from it runs."""

from __future__ import annotations

import io
import os
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.files import REPO, cli_exit, data_args, one_error

from leak_lightning import LeakDetector
from leak_lightning.checkpoint.io import AtomicCheckpointIO, newest_valid_checkpoint, read_checkpoint
from leak_lightning.training.callbacks.interrupt import _set_rng_state
from leak_lightning.training.module import LeakClassifier

OLD = REPO / "tests" / "fixtures" / "format1_tiny.ckpt"
SYSTEM = f"{os.system.__module__}.{os.system.__name__}"  # how a pickle names os.system (posix.system here)


class Payload:
    """Unpickled, it calls `fn(arg)`: what a checkpoint shared by someone else can carry."""

    def __init__(self, fn, arg: str) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def crafted(genuine: Path, out: Path, marker: Path, kind: str = "system") -> Path:
    """A real checkpoint with one more entry whose unpickling creates `marker`."""
    ckpt = torch.load(genuine, map_location="cpu", weights_only=True)
    if kind == "system":  # the classic: GLOBAL posix.system, pickle protocol 2 (torch.save's default)
        ckpt["notes"] = Payload(os.system, f"touch {shlex.quote(str(marker))}")
        torch.save(ckpt, out)
    elif kind == "exec-protocol-4":  # STACK_GLOBAL builtins.exec in framed protocol 4
        ckpt["notes"] = Payload(exec, f"open({str(marker)!r}, 'w').close()")
        torch.save(ckpt, out, pickle_protocol=4)
    else:  # torch's legacy (not zip) file format
        ckpt["notes"] = Payload(os.system, f"touch {shlex.quote(str(marker))}")
        torch.save(ckpt, out, _use_new_zipfile_serialization=False)
    return out


@pytest.fixture
def evil(trained_run, tmp_path) -> tuple[Path, Path]:
    """(a crafted copy of the trained run's best.ckpt, the marker its payload would create)."""
    marker = tmp_path / "PAYLOAD_RAN"
    return crafted(trained_run / "checkpoints" / "best.ckpt", tmp_path / "shared.ckpt", marker), marker


def _unsafe_load_runs_the_payload(path: Path, marker: Path) -> None:
    """The crafted file really is one: the unsafe load that the project used to do creates the marker."""
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()
    marker.unlink()


# ---- in-process: every loader of the package ----------------------------------------------------
LOADERS = {
    "read_checkpoint": lambda p: read_checkpoint(p),
    "LeakDetector.from_checkpoint": lambda p: LeakDetector.from_checkpoint(p, device="cpu"),
    "Lightning's CheckpointIO load (resume, --ckpt_path)": lambda p: AtomicCheckpointIO().load_checkpoint(
        p, weights_only=False),
    "LeakClassifier.load_from_checkpoint": lambda p: LeakClassifier.load_from_checkpoint(p, weights_only=False),
}


@pytest.mark.parametrize("kind, named", [("system", SYSTEM), ("exec-protocol-4", "builtins.exec"),
                                         ("legacy", SYSTEM)])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_code_and_runs_none_of_it(trained_run, tmp_path, loader, kind, named):
    marker = tmp_path / "PAYLOAD_RAN"
    path = crafted(trained_run / "checkpoints" / "best.ckpt", tmp_path / f"{kind}.ckpt", marker, kind)
    _unsafe_load_runs_the_payload(path, marker)
    with pytest.raises(ValueError) as err:
        LOADERS[loader](path)
    line = str(err.value)
    assert "\n" not in line and str(path) in line, line
    assert f"it holds {named}, which the safe unpickler refuses" in line and "written by" in line, line
    assert "weights_only" not in line  # torch's advice to load it unsafely is not passed on
    assert not marker.exists()


def test_export_and_adapt_refuse_before_any_work(evil, small_h5, tmp_path):
    from leak_lightning.inference.adapt import adapt_checkpoint
    from leak_lightning.inference.export import export

    path, marker = evil
    with pytest.raises(ValueError, match=f"{path}: not a usable checkpoint \\(it holds {SYSTEM}"):
        export(path, "torchscript", output=tmp_path / "out")
    with pytest.raises(ValueError, match=f"{path}: not a usable checkpoint \\(it holds {SYSTEM}"):
        adapt_checkpoint(str(path), str(small_h5["train"].parent.parent / "wav" / "TESTING"), "s",
                         output=str(tmp_path / "s.ckpt"), folds=2)
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "s.ckpt").exists()


def test_predict_in_process_is_one_line_exit_2(evil, small_h5, capsys):
    path, marker = evil
    line = one_error(*cli_exit(capsys, "predict", "--ckpt_path", path, "--data.predict_path",
                               small_h5["train"].parent.parent / "wav" / "TESTING"))
    assert f"--ckpt_path {path}: not a usable checkpoint (it holds {SYSTEM}" in line, line
    assert not marker.exists()


def test_a_crafted_last_ckpt_is_passed_over_by_name_on_resume(trained_run, tmp_path, ll_records):
    """`fit --ckpt_path last` looks for the newest usable checkpoint: a crafted one is named and passed over
    (never run), as a damaged one is."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    older = folder / "best.ckpt"
    older.write_bytes((trained_run / "checkpoints" / "best.ckpt").read_bytes())
    os.utime(older, (1, 1))
    marker = tmp_path / "PAYLOAD_RAN"
    last = crafted(trained_run / "checkpoints" / "last.ckpt", folder / "last.ckpt", marker)
    assert newest_valid_checkpoint(folder, preferred=last) == older
    said = [r.getMessage() for r in ll_records if "unusable" in r.getMessage()]
    assert len(said) == 1 and f"checkpoint {last} is unusable (it holds {SYSTEM}" in said[0], said
    assert not marker.exists()


# ---- what the project writes, and what it wrote before, still loads ------------------------------
def test_checkpoints_fit_writes_hold_only_plain_types(trained_run):
    """torch's safe unpickler with no allow-list at all: fit's best/last (the Ctrl-C save is the same
    save with rewound loop counts) hold tensors and plain values only."""
    for name in ("best", "last"):
        ckpt = torch.load(trained_run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)
        assert {"state_dict", "loops", "callbacks", "hyper_parameters", "leak_lightning"} <= set(ckpt)


def test_a_checkpoint_adapt_writes_holds_only_plain_types(trained_run, tmp_path):
    from synthetic import make_dataset

    from leak_lightning.inference.adapt import adapt_checkpoint

    site = tmp_path / "site"
    make_dataset(site, layout="pool", labels=("LEAK", "NORMAL"), files_per_label=3, sensors_per_label=2, seed=5)
    out = tmp_path / "s.ckpt"
    adapt_checkpoint(str(trained_run / "checkpoints" / "best.ckpt"), str(site), "s", output=str(out), folds=2)
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["leak_lightning"]["site"]["name"] == "s"


def test_genuine_and_format1_checkpoints_load_through_the_safe_path(trained_run):
    before = set(torch.serialization.get_safe_globals())
    best = trained_run / "checkpoints" / "best.ckpt"
    ckpt, contract = read_checkpoint(best)
    via_lightning = AtomicCheckpointIO().load_checkpoint(best)
    assert torch.equal(ckpt["state_dict"]["decision.threshold"], via_lightning["state_dict"]["decision.threshold"])
    old, _ = read_checkpoint(OLD)
    assert "num_classes" in old["hyper_parameters"]  # really the 0.2 layout
    assert AtomicCheckpointIO().load_checkpoint(OLD)["hyper_parameters"] == old["hyper_parameters"]
    assert LeakDetector.from_checkpoint(OLD, device="cpu").model.decision.options.vote_fraction == 0.25
    # the allow-list lives inside the loads only: user code keeps torch's own rules
    assert set(torch.serialization.get_safe_globals()) == before


def test_numpy_rng_state_of_early_checkpoints_loads_and_restores(trained_run, tmp_path):
    """Until 53b6c01 the Ctrl-C callback saved numpy's RNG state as numpy's own tuple (an array inside): it
    still loads (allowed for these loads only), and a resume restores it."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    np.random.seed(1234)
    ckpt["callbacks"]["GracefulInterrupt"]["rng"]["numpy"] = np.random.get_state()
    want = np.random.random(3)
    path = tmp_path / "early.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(Exception, match="numpy"):  # torch's own rules: refused, so the allow-list is needed
        torch.load(path, map_location="cpu", weights_only=True)
    loaded, _ = read_checkpoint(path)
    state = loaded["callbacks"]["GracefulInterrupt"]["rng"]
    saved = np.random.get_state(), random.getstate(), torch.get_rng_state()
    try:
        np.random.seed(0)
        _set_rng_state(state)
        assert np.array_equal(np.random.random(3), want)
    finally:
        np.random.set_state(saved[0]), random.setstate(saved[1]), torch.set_rng_state(saved[2])


# ---- every command, as a real process ------------------------------------------------------------
def _commands(path: Path, small_h5: dict, tmp: Path) -> dict[str, list]:
    wav = small_h5["train"].parent.parent / "wav" / "TESTING"
    run = ["--trainer.default_root_dir", tmp / "run"]
    return {
        "predict": ["predict", "--ckpt_path", path, "--data.predict_path", wav, *run],
        "validate": ["validate", "--ckpt_path", path, *data_args(small_h5), *run],
        "test": ["test", "--ckpt_path", path, *data_args(small_h5), *run],
        "fit": ["fit", "--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5), "--ckpt_path", path,
                "--trainer.max_epochs", "3", *run],
        "export": ["export", "--ckpt_path", path, "--format", "torchscript", "--output", tmp / "export"],
        "adapt": ["adapt", "--ckpt_path", path, "--input", wav, "--site", "s", "--output", tmp / "s.ckpt"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "validate", "test", "fit", "export", "adapt"])
def test_every_command_refuses_a_crafted_checkpoint(evil, small_h5, tmp_path, run_cli, command):
    path, marker = evil
    r = run_cli(*_commands(path, small_h5, tmp_path)[command])
    line = one_error(r.returncode, r.stderr)
    assert f"{path}: not a usable checkpoint (it holds {SYSTEM}, which the safe unpickler refuses" in line, line
    assert not marker.exists()
    assert not (tmp_path / "s.ckpt").exists() and not (tmp_path / "export").exists()


# ---- the names a checkpoint's hyper-parameters give to import --------------------------------------
def _naming(genuine: Path, out: Path, where: str, name: str) -> Path:
    """A real checkpoint whose hyper-parameters name `name` at `where`, its binding digest recomputed (anyone can:
    it guards against edits by mistake, not against someone who means it)."""
    from leak_lightning.checkpoint.contract import SECTION, binding_digest

    ckpt = torch.load(genuine, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    if where == "_instantiator":
        hp["_instantiator"] = name
    elif where == "module_arguments":  # an older key Lightning's own loader merges into the arguments
        ckpt["module_arguments"] = {"net": {**hp.pop("net"), "class_path": name}}
    elif where == "optimizer":
        hp["optimizer"] = name  # a bare import path, as jsonargparse takes for a callable
    else:
        hp["net"]["class_path"] = name
    ckpt[SECTION]["binding"] = binding_digest(ckpt)
    torch.save(ckpt, out)
    return out


@pytest.mark.parametrize("where, name", [("net", "plantednets.Net"), ("optimizer", "plantednets.make"),
                                         ("module_arguments", "plantednets.Net"),
                                         ("_instantiator", "torch.hub.load")])
def test_a_class_the_checkpoint_names_outside_the_trusted_packages_is_never_imported(trained_run, tmp_path,
                                                                                     monkeypatch, where, name):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "plantednets.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = make = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LEAK_LIGHTNING_TRUSTED_PACKAGES", raising=False)
    path = _naming(trained_run / "checkpoints" / "best.ckpt", tmp_path / "named.ckpt", where, name)
    for load in (read_checkpoint, lambda p: LeakDetector.from_checkpoint(p, device="cpu"),
                 LeakClassifier.load_from_checkpoint, lambda p: LeakClassifier.load_from_checkpoint(
                     io.BytesIO(p.read_bytes()))):  # a file object too
        with pytest.raises(ValueError) as err:
            load(path)
        line = str(err.value)
        assert "\n" not in line and f"name {name} to import" in line, line
        assert "LEAK_LIGHTNING_TRUSTED_PACKAGES" in line
    assert not marker.exists()


def test_a_package_the_user_trusts_by_name_is_imported(trained_run, tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text("from leak_lightning.models import LeakCNN\n\nclass Net(LeakCNN):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _naming(trained_run / "checkpoints" / "best.ckpt", tmp_path / "mine.ckpt", "net", "mynets.Net")
    monkeypatch.setenv("LEAK_LIGHTNING_TRUSTED_PACKAGES", "otherpkg, mynets")
    det = LeakDetector.from_checkpoint(path, device="cpu")
    assert type(det.model.net).__module__ == "mynets"
    genuine = LeakDetector.from_checkpoint(trained_run / "checkpoints" / "best.ckpt", device="cpu")
    assert torch.equal(det.model.decision.threshold, genuine.model.decision.threshold)
