"""`cnnlab train`: Hydra composes the config; the task validates, builds, fits, tests, writes the run folder and
returns the monitored metric (to sweepers). `main` is the command line; `hydra_entry` the Hydra task."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cnnlab.config import CONF_DIR, GROUPS, instantiate, monitor_mode
from cnnlab.errors import report, user_message
from cnnlab.validate import validate

TRAIN_HELP = """usage: cnnlab train [group=option ...] [key=value ...] [+key=value ...]
       cnnlab train -m group=a,b key=1,2 ...     (Hydra multirun: one run per combination)

Composes conf/train.yaml with one option per config group and your overrides (Hydra's override grammar),
trains, tests, and writes a run folder under outputs/. Useful Hydra flags: --cfg job (print the composed config),
--info, --hydra-help, --shell-completion. Config groups and their options:

"""


def main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        # Hydra's own --help composes every group option (about a second); this lists the same from conf/ at once.
        from cnnlab.cli.listing import show

        print(TRAIN_HELP + show([]), end="")
        return 0
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # errors come to us whole; we print one line for user errors
    if any(a.split("=", 1)[0].lstrip("+~") in ("resume", "ckpt_path") for a in args):
        from cnnlab.train.resume import hydra_args  # imports torch: only when a run is being continued

        args = hydra_args(args)  # resume=RUN_DIR / ckpt_path=FILE -> the overrides that continue that run
    sys.argv = ["cnnlab train", *args]
    try:
        hydra_entry()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        return report(message)
    return 0


def _choices() -> dict[str, str]:
    choices = HydraConfig.get().runtime.choices
    return {group: choices[group] for group in GROUPS if group in choices}


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The trainer node as Trainer keyword arguments; values with a `_target_` (a profiler, say) are built."""
    from omegaconf import OmegaConf

    kwargs = {}
    for key, value in cfg.trainer.items():
        if key == "description":
            continue
        if OmegaConf.is_dict(value) and "_target_" in value:
            value = instantiate(value)
        elif OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        kwargs[key] = value
    return kwargs


_SUMMARIES_SHOWN: set[tuple[str, tuple[str, ...]]] = set()  # (sweep or run folder, layers) printed already


def _print_model_summary(module: Any, cfg: DictConfig, run_dir: Path) -> int:
    from pytorch_lightning.utilities import rank_zero_only
    from rich.console import Console

    from cnnlab.models.summary import render, summarize

    rows, total, trainable = summarize(module.model, (cfg.dataset.channels, cfg.dataset.image_size,
                                                      cfg.dataset.image_size))
    if rank_zero_only.rank != 0:  # DDP: one process prints and writes the run folder
        return total
    table = render(rows, total, trainable, title=f"Model summary: {_choices().get('model', '')}")
    # A sweep prints each model's table once (each run folder still gets its model_summary.txt).
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else str(run_dir)
    shown = (sweep, tuple(str(row) for row in rows))
    if shown not in _SUMMARIES_SHOWN:
        _SUMMARIES_SHOWN.add(shown)
        Console().print(table)
    with (run_dir / "model_summary.txt").open("w") as handle:
        Console(file=handle, width=120).print(table)
    return total


def run(cfg: DictConfig) -> float | None:
    """Train and test one configuration in Hydra's run folder; returns the best monitored value."""
    validate(cfg)
    from cnnlab.train.environment import quiet_libraries

    quiet_libraries()
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from cnnlab.runs.diagnosis import diagnose
    from cnnlab.runs.read import best_epoch, read_metrics
    from cnnlab.runs.write import write_summary
    from cnnlab.train import environment, failures, resume
    from cnnlab.train.build import build_datamodule, build_module, plain_config
    from cnnlab.train.callbacks import RunLog, run_callbacks
    from cnnlab.train.checkpoint import AtomicCheckpointIO
    from cnnlab.train.distributed import local_ranks
    from cnnlab.train.fastpaths import CallbackGroup
    from cnnlab.train.interrupts import StopRequest, raise_if_stop_requested

    started = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = _choices()
    mode = monitor_mode(cfg)
    resumed = resume.load_for_resume(cfg, plain_config(cfg))
    if resumed is not None:
        resume.trim_metrics(run_dir, resumed)
        started -= resume.previous_duration(run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg)
    params = _print_model_summary(module, cfg, run_dir)

    title = " ".join(f"{g}={choices[g]}" for g in ("model", "loss", "optimizer", "scheduler") if g in choices)
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False)
    stop = StopRequest()
    trainer = pl.Trainer(
        **trainer_kwargs(cfg),
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=CallbackGroup.grouped(run_callbacks(cfg, run_dir, mode, title, stop)),
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        enable_progress_bar=cfg.progress_bar != "none",
    )
    environment.set_threads(cfg.get("threads"))
    environment.compile_model(module, cfg.get("compile"), on_gpu=trainer.strategy.root_device.type == "cuda")
    summary: dict[str, Any] = {
        "status": "running", "error": None, "choices": choices, "overrides": _overrides(), "monitor": cfg.monitor,
        "mode": mode, "params": params, "split_sizes": datamodule.split_sizes(), "seed": cfg.seed,
        "debug": cfg.debug.name if cfg.get("debug") else None,
        "experiment": cfg.experiment.name if cfg.get("experiment") else None,
        "host": socket.gethostname(), "pid": os.getpid(), "world_size": trainer.world_size,
        "speed": environment.settings(cfg, trainer),
    }
    if resumed is not None:
        summary["resumed_from"] = {"checkpoint": str(cfg.ckpt_path), "step": resumed["global_step"]}
    if trainer.is_global_zero:
        write_summary(run_dir, summary)
    monitor_column = cfg.monitor.replace("/", "_")
    test_metrics: dict[str, float] = {}
    checkpoint = trainer.checkpoint_callback
    # DDP on one machine: the other ranks run beside this one (local_ranks starts and joins them).
    with local_ranks(trainer), stop, failures.recorded(run_dir, summary, started, trainer), \
            environment.run_environment(cfg, trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        if cfg.test:
            ckpt = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
            results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        raise_if_stop_requested(trainer)
    if not trainer.is_global_zero:  # DDP: rank 0 alone writes the run folder and reports
        return None
    if cfg.test:
        _log_confusion(logger, module, datamodule.class_names)

    rows = read_metrics(run_dir)
    best = best_epoch(rows, monitor_column, mode)
    summary["speed"].update(environment.settings(cfg, trainer), data_on_device=datamodule.splits_on_device())
    summary.update({
        "status": "completed",
        "epochs": len(rows),
        "steps": trainer.global_step,
        "best": best,
        "best_checkpoint": str(Path(checkpoint.best_model_path).relative_to(run_dir))
        if checkpoint is not None and checkpoint.best_model_path else None,
        "final": rows[-1] if rows else None,
        "test": test_metrics,
        "duration_s": round(time.time() - started, 2),
        "first_step_at": next((c.first_step_at for c in CallbackGroup.flat(trainer.callbacks)
                               if isinstance(c, RunLog)), None),
        "diagnosis": diagnose(rows, monitor=monitor_column, mode=mode, patience=cfg.early_stopping.patience,
                              min_delta=cfg.early_stopping.min_delta, **cfg.diagnosis),
    })
    write_summary(run_dir, summary)
    _log_hparams(logger, cfg, choices, best, test_metrics, monitor_column)
    _print_result(summary)
    return None if best is None else best[monitor_column]


def _log_confusion(logger: Any, module: Any, class_names: list[str]) -> None:
    if module.confusion is None:
        return
    from cnnlab.runs.write import confusion_figure

    logger.experiment.add_figure("test/confusion_matrix", confusion_figure(module.confusion, class_names),
                                 close=True)


def _log_hparams(logger: Any, cfg: DictConfig, choices: dict[str, str], best: dict | None,
                 test_metrics: dict[str, float], monitor_column: str) -> None:
    params: dict[str, Any] = {g: v for g, v in choices.items() if g != "trainer"}
    params.update({"lr": cfg.optimizer.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                   "max_epochs": cfg.trainer.max_epochs})
    params.update(_overridden_values(cfg, choices))
    metrics = {f"hparams/{k}": v for k, v in test_metrics.items()}
    if best is not None:
        metrics[f"hparams/best_{monitor_column}"] = best[monitor_column]
    logger.log_hyperparams(params, metrics)
    logger.finalize("success")


def _overridden_values(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """Every key set on the command line (e.g. `loss.label_smoothing`), so the HPARAMS tab shows what a sweep
    varies."""
    from omegaconf import OmegaConf

    from cnnlab.runs.read import override_key

    values: dict[str, Any] = {}
    for override in _overrides():
        key = override_key(override)
        if key and key not in choices:
            value = OmegaConf.select(cfg, key, default=None)
            values[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return values


def _print_result(summary: dict[str, Any]) -> None:
    import logging

    from rich.console import Console

    console = Console(soft_wrap=True)
    log = logging.getLogger("cnnlab")  # train.log keeps what the console shows
    best, test = summary.get("best") or {}, summary.get("test") or {}
    parts = [f"epochs {summary['epochs']}", f"{summary['duration_s']:.1f}s"]
    if best:
        parts.append(f"best val_acc {best.get('val_acc') or float('nan'):.4f} (epoch {int(best['epoch'])})")
    if "test/acc" in test:
        parts.append(f"test acc {test['test/acc']:.4f}")
    if summary.get("debug"):
        parts.append(f"debug={summary['debug']}")
    lines = ["done: " + ", ".join(parts)]
    diagnosis = summary.get("diagnosis") or {}
    if diagnosis.get("message"):
        lines.append(f"diagnosis: {diagnosis['message']}")
    lines.append(f"run folder: {HydraConfig.get().runtime.output_dir}")
    for line in lines:
        head, _, rest = line.partition(": ")
        console.print(f"[bold]{head}:[/bold] {rest}" if head in ("done", "diagnosis") else line, highlight=False)
        log.info(line)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> float | None:
    from cnnlab.train.failures import ended

    try:
        return run(cfg)
    except BaseException as error:
        # Reported here, as one line, before Hydra would log the job's failure around it; in a sweep, a failed
        # run is recorded in its summary.json and the sweep goes on.
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if isinstance(error, Exception) and user_message(error) is not None:
            _discard_unstarted(cfg, run_dir)
        return ended(error, run_dir, {"status": "failed", "choices": _choices(), "overrides": _overrides()})


def _discard_unstarted(cfg: DictConfig, run_dir: Path) -> None:
    """A single run refused for a user error before it began (no summary.json): remove the folder Hydra made for
    it, so `compare` does not list it as killed or still running. A resumed run's folder is never removed."""
    import shutil

    from hydra.types import RunMode

    from cnnlab.runs.layout import SUMMARY_FILE

    if HydraConfig.get().mode != RunMode.RUN or cfg.get("ckpt_path") or (run_dir / SUMMARY_FILE).exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.parent.rmdir()  # the day's folder, when this was its only run
    except OSError:
        pass
