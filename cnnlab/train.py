"""The Hydra task behind `cnnlab train`: validate, build, fit, test, write the summary, return the metric."""

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

from cnnlab.config import CONF_DIR, GROUPS, validate
from cnnlab.search import register_resolvers

register_resolvers()


def _choices() -> dict[str, str]:
    choices = HydraConfig.get().runtime.choices
    return {group: choices[group] for group in GROUPS if group in choices}


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def _callbacks(cfg: DictConfig, run_dir: Path, mode: str, title: str) -> list[Any]:
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from cnnlab.runlog import RunLog

    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=cfg.monitor, mode=mode,
                        save_top_k=1, save_last=True, enable_version_counter=False, auto_insert_metric_name=False),
        LearningRateMonitor(logging_interval="step"),
        RunLog(run_dir, title=title),
    ]
    if cfg.early_stopping.enabled:
        callbacks.append(EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.early_stopping.patience,
                                       min_delta=cfg.early_stopping.min_delta))
    bar = cfg.progress_bar
    if bar == "auto":
        bar = "rich" if sys.stdout.isatty() else "none"
    if bar == "rich":
        from pytorch_lightning.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    elif bar == "tqdm":
        from pytorch_lightning.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar())
    return callbacks


def _print_model_summary(module: Any, cfg: DictConfig, run_dir: Path) -> int:
    from pytorch_lightning.utilities import rank_zero_only
    from rich.console import Console

    from cnnlab.models.summary import render, summarize

    rows, total, trainable = summarize(module.model, (cfg.dataset.channels, cfg.dataset.image_size,
                                                      cfg.dataset.image_size))
    if rank_zero_only.rank != 0:  # DDP: one process prints and writes the run folder
        return total
    table = render(rows, total, trainable, title=f"Model summary: {_choices().get('model', '')}")
    Console().print(table)
    with (run_dir / "model_summary.txt").open("w") as handle:
        Console(file=handle, width=120).print(table)
    return total


def _quiet_libraries() -> None:
    """Drop library chatter that says nothing about this run (tips, deprecations inside Lightning)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())


def run(cfg: DictConfig) -> float | None:
    """Train and test one configuration in Hydra's run folder; returns the best monitored value."""
    validate(cfg)
    _quiet_libraries()
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from cnnlab.build import build_datamodule, build_module
    from cnnlab.checkpoint import AtomicCheckpointIO
    from cnnlab.config import monitor_mode
    from cnnlab.distributed import local_ranks
    from cnnlab.runlog import best_epoch, read_metrics, write_summary

    started = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = _choices()
    mode = monitor_mode(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg)
    params = _print_model_summary(module, cfg, run_dir)

    title = " ".join(f"{g}={choices[g]}" for g in ("model", "loss", "optimizer", "scheduler") if g in choices)
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False)
    trainer = pl.Trainer(
        **{k: v for k, v in cfg.trainer.items() if k != "description"},
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=_callbacks(cfg, run_dir, mode, title),
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        enable_progress_bar=cfg.progress_bar != "none",
    )
    summary: dict[str, Any] = {
        "status": "running", "choices": choices, "overrides": _overrides(), "monitor": cfg.monitor,
        "mode": mode, "params": params, "split_sizes": datamodule.split_sizes(), "seed": cfg.seed,
        "host": socket.gethostname(), "pid": os.getpid(), "world_size": trainer.world_size,
    }
    test_metrics: dict[str, float] = {}
    checkpoint = trainer.checkpoint_callback
    with local_ranks(trainer):  # DDP on one machine: the other ranks run beside this one
        trainer.fit(module, datamodule=datamodule)
        if cfg.test:
            ckpt = "best" if checkpoint is not None and checkpoint.best_model_path else None
            results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if not trainer.is_global_zero:  # DDP: rank 0 alone writes the run folder and reports
        return None
    if cfg.test:
        _log_confusion(logger, module, datamodule.class_names)

    rows = read_metrics(run_dir)
    monitor_column = cfg.monitor.replace("/", "_")
    best = best_epoch(rows, monitor_column, mode)
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
    })
    write_summary(run_dir, summary)
    _log_hparams(logger, cfg, choices, best, test_metrics, monitor_column)
    _print_result(summary)
    return None if best is None else best[monitor_column]


def _log_confusion(logger: Any, module: Any, class_names: list[str]) -> None:
    if module.confusion is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = module.confusion.numpy()
    size = max(4, 0.5 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    logger.experiment.add_figure("test/confusion_matrix", fig, close=True)


def _log_hparams(logger: Any, cfg: DictConfig, choices: dict[str, str], best: dict | None,
                 test_metrics: dict[str, float], monitor_column: str) -> None:
    params: dict[str, Any] = {g: v for g, v in choices.items() if g != "trainer"}
    params.update({"lr": cfg.optimizer.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                   "max_epochs": cfg.trainer.max_epochs})
    metrics = {f"hparams/{k}": v for k, v in test_metrics.items()}
    if best is not None:
        metrics[f"hparams/best_{monitor_column}"] = best[monitor_column]
    logger.log_hyperparams(params, metrics)
    logger.finalize("success")


def _print_result(summary: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    best, test = summary.get("best") or {}, summary.get("test") or {}
    parts = [f"epochs {summary['epochs']}", f"{summary['duration_s']:.1f}s"]
    if best:
        parts.append(f"best val_acc {best.get('val_acc') or float('nan'):.4f} (epoch {int(best['epoch'])})")
    if "test/acc" in test:
        parts.append(f"test acc {test['test/acc']:.4f}")
    console.print("[bold]done:[/bold] " + ", ".join(parts))
    console.print(f"run folder: {HydraConfig.get().runtime.output_dir}")


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> float | None:
    from cnnlab.config import ConfigError, report

    try:
        return run(cfg)
    except ConfigError as error:
        # Reported here, as one line, before Hydra would log the job's failure around it.
        raise SystemExit(report(str(error))) from None
