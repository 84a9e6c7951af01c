"""Start-up banner, one line per epoch, a log file in the run directory (rank 0 only)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from ... import __version__
from ...runtime.fileio import open_own
from ...runtime.logs import START, ElapsedTimeFormatter, bytes_human, seconds_since_process_start

log = logging.getLogger(__name__)


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time, elapsed, level, message and any `fields` passed in `extra`."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start

    def format(self, record: logging.LogRecord) -> str:
        obj = {"time": record.created, "elapsed": round(time.monotonic() - self.start, 3),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        obj.update(getattr(record, "fields", {}))
        return json.dumps(obj, default=float)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


class ConsoleLogger(L.Callback):
    """The origin's console story, on Lightning hooks.

    Args:
        log_file: name of the log file written in the run directory (None: no file).
        json_lines: write that file as JSON lines (one object per record) instead of text.
    """

    def __init__(self, log_file: str | None = "train.log", json_lines: bool = False) -> None:
        self.log_file, self.json_lines = log_file, json_lines
        self._handler: logging.Handler | None = None
        self._t_epoch = self._t_val = self._val_time = 0.0
        self._segments = 0
        self._first_call: float | None = None
        self._first_logged = False

    # ---- set-up ----------------------------------------------------------------------------
    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if self.log_file and self._handler is None:
            path = Path(trainer.default_root_dir) / self.log_file
            path.parent.mkdir(parents=True, exist_ok=True)
            # appended through our own plain file only: a link someone planted at the name is refused, not
            # followed (0o666: the umask decides its mode, as with logging.FileHandler)
            stream = open(path, "a", encoding="utf-8", opener=lambda p, flags: open_own(Path(p), flags, 0o666))
            handler = logging.StreamHandler(stream)
            handler.setFormatter(JsonLinesFormatter(START) if self.json_lines else ElapsedTimeFormatter(False))
            logging.getLogger("leak_lightning").addHandler(handler)
            self._handler = handler
            log.info("log file: %s", path)
        self._banner(trainer, pl_module, stage)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # the console gets one line (cli.main); the run's log file keeps the whole traceback
        if self._handler is not None and not isinstance(exception, (SystemExit, KeyboardInterrupt)):
            record = logging.LogRecord(log.name, logging.ERROR, __file__, 0, "run stopped by %s: %s",
                                       (type(exception).__name__, exception),
                                       (type(exception), exception, exception.__traceback__))
            self._handler.handle(record)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._handler is not None:
            logging.getLogger("leak_lightning").removeHandler(self._handler)
            self._handler.close()
            self._handler.stream.close()  # a StreamHandler leaves its stream open
            self._handler = None

    def _banner(self, trainer: L.Trainer, module, stage: str) -> None:
        dm = trainer.datamodule
        header = {"extra": {"colour": "header"}}
        log.info("=" * 78, **header)
        log.info("leak_lightning %s: %s", __version__, getattr(stage, "value", stage), **header)
        log.info("=" * 78, **header)
        dev = trainer.strategy.root_device
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            log.info("device: %s (%s), %d process(es)", props.name, bytes_human(props.total_memory),
                     trainer.world_size, extra={"colour": "success"})
        else:
            log.info("device: CPU, %d process(es), %d threads", trainer.world_size, torch.get_num_threads())
        fn = getattr(stage, "value", stage)
        compiled = module.compiles(fn)
        mode = module.compile_options.mode
        graphs = compiled and mode in ("reduce-overhead", "max-autotune") and dev.type == "cuda"
        log.info("cudnn.benchmark=%s, float32 matmul precision %s, precision=%s, compile=%s%s",
                 torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(), trainer.precision,
                 f"yes, mode {mode}" if compiled else "no", ", CUDA graphs" if graphs else "")
        for name, info in dm.infos.items():
            log.info("%-5s %s: %d files, %d segments, cache=%s", name, info.path, info.num_files,
                     info.num_segments, dm.modes.get(name, "-"))
        log.info("classes: %s; leak class %r at index %d", ", ".join(module.class_names),
                 module.hparams.leak_class_name, module.leak_index, extra={"colour": "success"})
        if stage != "predict":
            log.info("batch size %d (eval %d), %d optimizer step(s) per Lightning step, workers %d (streaming only)",
                     dm.batch_size, dm.eval_batch_size, dm.steps_per_call, dm.num_workers)
        total = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        log.info("parameters: %s total, %s trainable", f"{total:,}", f"{trainable:,}")

    # ---- per epoch -------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._first_call is None:  # start-up, and what the first step costs (torch.compile runs there)
            self._first_call = time.perf_counter()
            log.info("first training step %.1f s after the command started", seconds_since_process_start())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t_epoch, self._val_time, self._segments = time.perf_counter(), 0.0, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch skips that hook

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._first_call and not self._first_logged:
            self._first_logged = True
            if pl_module.compiles("fit"):
                log.info("first training call took %.1f s: torch.compile compiles there (later runs on this "
                         "machine reuse inductor's cache)", time.perf_counter() - self._first_call)
        x = batch[0]  # a batch, or a block of batches (data.steps_per_call)
        self._segments += len(x) if torch.is_tensor(x) else sum(len(b) for b in x)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._t_val = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._val_time += time.perf_counter() - self._t_val

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        train_loss = pl_module.running_train_loss()  # collective: every rank calls it
        if not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self._t_epoch
        rate = self._segments * trainer.world_size / max(elapsed - self._val_time, 1e-9)
        m = trainer.callback_metrics
        fields = {"epoch": trainer.current_epoch, "train_loss": float(train_loss) if train_loss is not None else None}
        parts = [f"Epoch {trainer.current_epoch:03d}"]
        if train_loss is not None:
            parts.append(f"train_loss={float(train_loss):.4f}")
        for key in ("val/loss", "val/file_leak_f1", "val/file_leak_auroc", "val/threshold"):
            if key in m:
                parts.append(f"{key.replace('/', '_')}={float(m[key]):.4f}")
                fields[key] = float(m[key])
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        parts += [f"lr={lr:.2e}", f"{_si(rate)} seg/s", f"{elapsed:.1f}s"]
        fields.update(lr=lr, segments_per_s=rate, seconds=elapsed)
        log.info(" │ ".join(parts), extra={"fields": fields})

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        es = trainer.early_stopping_callback
        if es is not None and es.stopped_epoch > 0:
            log.warning("early stopping at epoch %d: %s did not improve for %d checks (best %.4f)",
                        es.stopped_epoch, es.monitor, es.patience, float(es.best_score))
        log.info("training finished after %d epochs, %d steps", trainer.current_epoch, trainer.global_step,
                 extra={"colour": "success"})
