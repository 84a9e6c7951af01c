"""The training core through the CLI: configs, checkpoints in new processes, reports, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.files import REPO, cli_exit, data_args, first_files
from helpers.models import classifier

from leak_lightning.cli import main

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fast_dev_run_of_every_config(config, small_h5, tmp_path):
    from leak_lightning.cli.leak_cli import LeakCLI

    cli = LeakCLI(args=["fit", "--config", str(config), *data_args(small_h5), "--trainer.fast_dev_run", "true",
                        "--trainer.default_root_dir", str(tmp_path), "--data.batch_size", "256"])
    assert cli.trainer.global_step == 1 and cli.trainer.state.finished


def test_print_config_shows_overrides_and_defaults(small_h5, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(REPO / "configs/default.yaml"), *data_args(small_h5),
              "--model.optimizer.lr", "3e-4", "--print_config"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "monitor: val/file_leak_f1" in out


@pytest.mark.slow
def test_fit_then_validate_and_test_in_new_processes(small_h5, tmp_path, run_cli):
    run = tmp_path / "run"
    common = ["--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5), "--trainer.default_root_dir", run]
    r = run_cli("fit", *common, "--trainer.max_epochs", "2", "--data.batch_size", "512")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "checkpoints/best.ckpt").is_file() and (run / "checkpoints/last.ckpt").is_file()
    assert f"checkpoints in {run / 'checkpoints'}" in r.stderr
    ckpt = torch.load(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    saved_threshold = float(ckpt["state_dict"]["decision.threshold"])
    assert ckpt["hyper_parameters"]["class_names"] == ["BACKGROUND", "CRACK", "LEAK", "NORMAL", "UNCLASSIFIED"]

    # hyper-parameters come from the checkpoint: a different width in the YAML must not matter
    r = run_cli("test", *common, "--ckpt_path", "best", "--model.net.channels", "[8, 8, 8, 8]")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((run / "test_report.json").read_text())
    assert report["threshold"] == pytest.approx(saved_threshold)
    assert report["leak_class"] == "LEAK" and 0 <= report["metrics"]["file_leak_f1"] <= 1
    rows = (run / "test_predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,true_label,leak_score,leak_probability,leak_decision,decision_score,"
                              "decision_cutoff,score_BACKGROUND")
    assert len(rows) == 1 + 10  # one per test file (2 per label)
    assert "TEST results" in r.stderr

    r = run_cli("validate", *common, "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "validate_report.json").read_text())["stage"] == "val"


@pytest.mark.slow
def test_last_checkpoint_follows_every_epoch_not_only_new_bests(small_h5, tmp_path):
    # "epoch" in min mode is best at epoch 0 and never again: only last.ckpt can follow the run
    main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--data.batch_size", "1024",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "3",
          "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min"])
    steps = {name: torch.load(tmp_path / "checkpoints" / f"{name}.ckpt", map_location="cpu",
                              weights_only=False)["global_step"] for name in ("best", "last")}
    assert steps == {"best": 6, "last": 18}  # 6 steps per epoch


@pytest.mark.slow
def test_a_longer_resumed_run_keeps_decaying_instead_of_restarting(small_h5, tmp_path):
    args = ["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--data.batch_size", "1024",
            "--trainer.default_root_dir", str(tmp_path), "--model.optimizer.lr", "0.001"]
    main([*args, "--trainer.max_epochs", "1"])  # 6 steps: the cosine ends at the minimum
    main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])  # 6 more steps
    sched = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["lr_schedulers"][0]
    assert sched["T_max"] == 12
    # held at the floor (lr * min_lr_ratio) instead of climbing back half-way to 1e-3
    assert sched["_last_lr"][0] == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.slow
def test_a_new_fit_never_replaces_an_earlier_run_unasked(small_h5, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5), "--trainer.default_root_dir", run,
              "--trainer.max_steps", "2", "--data.batch_size", "1024", "--console.log_file", "null"]
    main(["fit", *map(str, common)])
    best = (run / "checkpoints/best.ckpt").read_bytes()
    code, err = cli_exit(capsys, "fit", *common, "--model.optimizer.lr", "0.01")
    assert code == 2
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and str(run / "checkpoints") in errors[0] and "--ckpt_path last" in errors[0]
    assert (run / "checkpoints/best.ckpt").read_bytes() == best  # untouched
    main(["fit", *map(str, common), "--model.optimizer.lr", "0.01", "--overwrite", "true"])
    assert (run / "checkpoints/best.ckpt").read_bytes() != best  # replaced by the new run


def test_missing_checkpoint_is_one_clear_line(small_h5, tmp_path, capsys):
    code, err = cli_exit(capsys, "test", "--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5),
                         "--trainer.default_root_dir", tmp_path / "nothing", "--ckpt_path", "best")
    assert code == 2
    assert f"{tmp_path / 'nothing' / 'checkpoints' / 'best.ckpt'} does not exist" in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_gpu_without_cuda_is_one_clear_line(small_h5, tmp_path, capsys):
    code, err = cli_exit(capsys, "fit", "--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5),
                         "--trainer.default_root_dir", tmp_path, "--trainer.accelerator", "gpu")
    assert code == 2
    assert "CUDA is not available" in err and "Traceback" not in err


def test_leak_class_is_chosen_by_name(small_h5, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5),
              "--trainer.default_root_dir", str(tmp_path), "--model.leak_class_name", "PUMP",
              "--trainer.fast_dev_run", "true"])
    assert exit_.value.code == 2
    assert "leak_class_name 'PUMP' is not one of the dataset's classes" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_ranks_match_one_process(small_h5, tmp_path, run_cli):
    run = tmp_path / "run"
    common = ["--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5), "--trainer.default_root_dir", run]
    assert run_cli("fit", *common, "--trainer.max_epochs", "1").returncode == 0
    reports = {}
    for devices in ("1", "2"):
        r = run_cli("validate", *common, "--ckpt_path", "best", "--trainer.devices", devices,
                    "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp" if devices == "2" else "auto",
                    "--data.eval_batch_size", "400")
        assert r.returncode == 0, r.stderr[-3000:]
        reports[devices] = json.loads((run / "validate_report.json").read_text())["metrics"]
    one, two = reports["1"], reports["2"]
    for key in ("file_leak_f1", "file_leak_auroc", "file_accuracy", "seg_ap_macro", "seg_auroc_macro",
                "threshold"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["device", "stream"])
def test_ddp_fit_with_uneven_validation_shares(small_h5, tmp_path, run_cli, cache):
    # 7 validation files over 2 ranks, one file per batch: 3 batches on one rank, 4 on the other
    val = first_files(small_h5["val"], tmp_path / "val7.h5", 7)
    run = tmp_path / "run"
    r = run_cli("fit", "--config", REPO / "configs/demo_frame.yaml", "--data.train_h5", small_h5["train"],
                "--data.val_h5", val, "--data.test_h5", "null", "--trainer.default_root_dir", run,
                "--trainer.max_epochs", "1", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                "--trainer.strategy", "ddp", "--data.cache", cache, "--data.num_workers", "1",
                "--data.eval_batch_size", "80")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (run / "checkpoints" / "best.ckpt").is_file() and "val_file_leak_f1=" in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/demo.yaml", "configs/demo_frame.yaml"], ids=["recording", "frame"])
def test_demo_config_learns_the_synthetic_task(tmp_path, run_cli, config):
    from synthetic import make_dataset

    from leak_lightning.builder.build import build_dataset

    make_dataset(tmp_path / "wav", layout="origin", files_per_label=60, sensors_per_label=12, seed=0)
    build_dataset(tmp_path / "wav", tmp_path / "data", progress=False)
    h5 = {k: tmp_path / "data" / f"{v}_DATASET.H5" for k, v in
          (("train", "TRAINING"), ("val", "VALIDATION"), ("test", "TESTING"))}
    common = ["--config", REPO / config, *data_args(h5), "--trainer.default_root_dir", tmp_path / "run"]
    r = run_cli("fit", *common, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("test", *common, "--ckpt_path", "best")
    assert r.returncode == 0, r.stderr[-3000:]
    f1 = json.loads((Path(tmp_path) / "run" / "test_report.json").read_text())["metrics"]["file_leak_f1"]
    assert f1 >= 0.9


def test_predict_on_wavs_matches_test_on_the_built_dataset(small_h5, trained_run, tmp_path, run_cli):
    """Raw WAVs through predict give the scores `test` gave for the same recordings via the HDF5."""
    import csv
    import shutil

    import numpy as np
    import soundfile as sf

    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    common = ["--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5), "--trainer.default_root_dir", run]
    main(["test", *map(str, common), "--ckpt_path", "best"])
    wavs = tmp_path / "wavs"
    shutil.copytree(small_h5["train"].parent.parent / "wav" / "TESTING", wavs)
    one = sorted(wavs.rglob("*.wav"))[0]
    audio, sr = sf.read(one, dtype="float32")
    sf.write(wavs / "long_25s.wav", np.concatenate([audio, audio, audio[: 5 * sr]]), sr)  # 3 windows
    (wavs / "broken.wav").write_bytes(b"RIFF....WAVE")
    r = run_cli("predict", *common, "--ckpt_path", "best", "--data.predict_path", wavs)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped" in r.stderr and "broken.wav" in r.stderr
    rows = {Path(row["path"]).name: row for row in csv.DictReader((run / "predictions.csv").open())}
    tested = {Path(row["path"]).name: row for row in csv.DictReader((run / "test_predictions.csv").open())}
    assert len(tested) == 10 and set(tested) < set(rows)
    for name, row in tested.items():
        assert rows[name]["status"] in ("ok", "flagged") and rows[name]["windows"] == "1"
        assert float(rows[name]["leak_score"]) == pytest.approx(float(row["leak_score"]), abs=1e-4), name
        assert rows[name]["leak_decision"] == row["leak_decision"], name
    assert rows["long_25s.wav"]["windows"] == "3"
    assert rows["broken.wav"]["status"].startswith("skipped: not readable as audio")


def _failing_backend(gm, example_inputs):
    raise RuntimeError("inductor exploded\nlong backend trace")


def _oom_at_run_time(gm, example_inputs):
    def run(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return run


def test_a_compile_failure_warns_once_and_runs_eager(ll_records):
    from leak_lightning.models.compiled import CompiledNet

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    compiled = CompiledNet(net, backend=_failing_backend)
    x = torch.randn(5, 4)
    torch.testing.assert_close(compiled(x), net(x))
    torch.testing.assert_close(compiled(x), net(x))  # eager from then on, without a second warning
    assert compiled.compiled is None
    warnings = [r.getMessage() for r in ll_records if r.levelname == "WARNING"]
    assert warnings == ["torch.compile failed (RuntimeError: inductor exploded); continuing in eager mode"]


def test_a_runtime_error_in_the_compiled_network_is_raised_not_hidden():
    from leak_lightning.models.compiled import CompiledNet

    compiled = CompiledNet(torch.nn.Linear(4, 3), backend=_oom_at_run_time)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        compiled(torch.randn(5, 4))
    assert compiled.compiled is not None  # still compiled: an out-of-memory is not a reason to run slower


def test_the_module_compiles_its_network_when_asked(monkeypatch):
    from leak_lightning.models import compiled as compiled_module

    calls = []
    real = compiled_module.torch.compile
    monkeypatch.setattr(compiled_module.torch, "compile",
                        lambda net, mode=None, backend=None: calls.append((net, mode)) or real(net, backend="eager"))
    model = classifier(compile={"enabled": True, "mode": "reduce-overhead"})
    model.setup("validate")
    assert calls == [(model.net, "reduce-overhead")] and model.compiled is not None
    x = torch.randn(4, 64, 1)
    model.eval()
    torch.testing.assert_close(model(x), model.net(x))
    eager = classifier(compile={"enabled": False})
    eager.setup("fit")
    assert eager.compiled is None and len(calls) == 1


def test_fused_adamw_is_the_same_update_and_off_by_default_on_cpu(small_h5, tmp_path):
    from leak_lightning.cli.leak_cli import LeakCLI

    def one_step(*extra: str):
        cli = LeakCLI(run=False, args=[
            "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--seed_everything", "1",
            "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
            "--data.batch_size", "256", *extra])
        before = {k: v.clone() for k, v in cli.model.net.state_dict().items()}
        cli.trainer.fit(cli.model, cli.datamodule)
        after = cli.model.net.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
        return cli.trainer.optimizers[0].defaults["fused"], after

    default_fused, default = one_step()
    fused, with_fused = one_step("--model.optimizer.fused", "true")
    assert not default_fused and fused
    for key, value in default.items():
        torch.testing.assert_close(with_fused[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_blocks_of_steps_are_the_same_training_as_single_steps(small_h5, tmp_path):
    finals = {}
    for k in ("1", "3"):
        run = tmp_path / k
        main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5),
              "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1", "--data.batch_size", "512",
              "--data.steps_per_call", k, "--console.log_file", "null", "--trainer.deterministic", "true"])
        ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
        finals[k] = ckpt
    assert finals["1"]["global_step"] == finals["3"]["global_step"] == 11  # optimizer steps, not blocks
    for key, value in finals["1"]["state_dict"].items():
        assert torch.equal(value, finals["3"]["state_dict"][key]), key
    assert finals["3"]["lr_schedulers"][0]["T_max"] == 11


@pytest.mark.parametrize("enabled, on_cuda, want", [
    (None, True, {"fit": True, "validate": False, "test": False, "predict": False}),  # by default: training on CUDA
    (None, False, {"fit": False, "validate": False, "test": False, "predict": False}),
    (True, False, {"fit": True, "validate": True, "test": True, "predict": True}),
    (False, True, {"fit": False, "validate": False, "test": False, "predict": False}),
])
def test_which_stages_compile(monkeypatch, enabled, on_cuda, want):
    model = classifier(compile={"enabled": enabled})
    monkeypatch.setattr(type(model), "_on_cuda", lambda self: on_cuda)
    assert {stage: model.compiles(stage) for stage in want} == want


def test_on_cuda_asks_the_attached_trainer_and_is_false_without_one():
    from types import SimpleNamespace

    model = classifier()
    assert model._on_cuda() is False  # no trainer attached: the public property raises, read as "not on CUDA"
    model.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert model._on_cuda() is True  # the module still on the CPU, its trainer's device on CUDA (before the move)
    model.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert model._on_cuda() is False
