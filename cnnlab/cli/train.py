"""`cnnlab train`: Hydra composes the config; the task validates, builds, fits, tests, writes the run folder and
returns the monitored metric (to sweepers). `main` is the command line; `hydra_entry` the Hydra task."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cnnlab.cli.common import run_command
from cnnlab.config import (
    CONF_DIR,
    GROUPS,
    TRUST_FLAG,
    config_folders_of,
    given_config_dirs,
    instantiate,
    monitor_mode,
    project_importable,
    searching,
    split_config_dirs,
    user_config_dirs,
)
from cnnlab.errors import ConfigError, user_message
from cnnlab.validate import validate

# Set by `--trust` for this process and its DDP ranks: a continued run's saved config may name any target.
TRUST_ENV = "CNNLAB_TRUST"

TRAIN_HELP = """usage: cnnlab train [group=option ...] [key=value ...] [+key=value ...]
       cnnlab train -m group=a,b key=1,2 ...     (Hydra multirun: one run per combination)
       cnnlab train resume=RUN_DIR [--trust]     (continue a run; --trust: its saved config may name any target)
       cnnlab train [-m ...] cv.folds=K          (k-fold cross-validation: K runs, one per validation fold)

Composes conf/train.yaml with one option per config group and your overrides (Hydra's override grammar),
trains, tests, and writes a run folder under outputs/. Your own options: conf/GROUP/NAME.yaml in the working
folder, --config-dir DIR and CNNLAB_CONFIG_PATH (folders like conf/) come before the built-in ones.
Useful Hydra flags: --cfg job (print the composed config), --info, --hydra-help, --shell-completion.
Config groups and their options:

"""


def main(args: list[str]) -> int:
    trust_before = os.environ.get(TRUST_ENV)
    if TRUST_FLAG in args:  # the saved config of the run continued may name any target (DDP ranks inherit it)
        args = [a for a in args if a != TRUST_FLAG]
        os.environ[TRUST_ENV] = "1"
    from cnnlab.runs.lock import release_all

    try:
        return run_command(_train, args)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    finally:
        release_all()  # the run folder's lock goes with the command, however it ended
        if trust_before is None:  # --trust was for this command only (a notebook or test calls main again)
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = trust_before


def _train(args: list[str]) -> int:
    config_dirs, args = split_config_dirs(args)
    if args and args[0] in ("-h", "--help"):
        # Hydra's own --help composes every group option (about a second); this lists the same at once.
        from cnnlab.cli.listing import show

        print(TRAIN_HELP + show([], user_config_dirs(config_dirs)), end="")
        return 0
    hydra_run(args, config_dirs)
    return 0


# Set by cnnlab.api around its call: a failing run raises its error to the caller instead of exiting, and the
# run folder is appended to RUN_DIRS.
RAISE_ERRORS: ContextVar[bool] = ContextVar("cnnlab_train_raise_errors", default=False)
RUN_DIRS: ContextVar[list[Path] | None] = ContextVar("cnnlab_train_run_dirs", default=None)


# The task reads the ContextVars through these: joblib's launcher pickles the task by value, and a ContextVar
# does not pickle (module-level functions go by reference).
def _note_run_dir() -> None:
    run_dirs = RUN_DIRS.get()
    if run_dirs is not None:
        run_dirs.append(Path(HydraConfig.get().runtime.output_dir))


def _raising() -> bool:
    return RAISE_ERRORS.get()


def hydra_run(args: list[str], config_dirs: Sequence[str | Path] = ()) -> None:
    """`cnnlab train ARGS` through Hydra's main: the user's config folders (`config_dirs` first, then conf/ in
    the working folder and CNNLAB_CONFIG_PATH, then those a resumed run recorded) before the built-in ones."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # errors come to us whole; we print one line for user errors
    user_config_dirs(config_dirs)  # each must exist
    given_config_dirs(config_dirs)  # the user's own: searched by child processes too, their targets trusted
    if _resumes_a_sweep(args):
        from cnnlab.runs.sweep_resume import resume_args

        args = resume_args(args)  # resume=SWEEP_DIR -> the sweep's overrides, its folder, the resumable sweeper
    elif any(a.split("=", 1)[0].lstrip("+~") in ("resume", "ckpt_path") for a in args):
        from cnnlab.train.resume import hydra_args, recorded_config_dirs  # imports torch: only to continue a run

        config_dirs = [*config_dirs, *recorded_config_dirs(args)]
        # resume=RUN_DIR / ckpt_path=FILE -> the overrides that continue that run
        args = hydra_args(args, trust=os.environ.get(TRUST_ENV) == "1")
    args = cross_validation_args(args)
    searched = user_config_dirs(config_dirs)
    project_importable()  # `_target_: my_models.MyNet` from the working folder, as with `python -m`
    sys.argv = [_completion() if any(a in ("-sc", "--shell-completion") for a in args) else "cnnlab train", *args]
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # an earlier run or compose in this process (notebooks) leaves it set up
    try:
        with searching(searched):
            hydra_entry()
    finally:
        GlobalHydra.instance().clear()


def _completion() -> str:
    """Hydra's shell completion for `cnnlab train`: its script calls `cnnlab -sc query=bash` (cnnlab.cli routes
    that here) with the line typed, which Hydra reads without the program name; the word `train` goes too."""
    words = os.environ.get("COMP_LINE", "").split(" ")
    if len(words) > 1 and words[1] == "train":
        os.environ["COMP_LINE"] = " ".join(words[:1] + words[2:])
        if os.environ.get("COMP_POINT", "").isdigit():
            os.environ["COMP_POINT"] = str(max(0, int(os.environ["COMP_POINT"]) - len("train ")))
    return "cnnlab"  # the program name the installed script completes


def _resumes_a_sweep(args: list[str]) -> bool:
    """`resume=SWEEP_DIR`: a folder with Hydra's multirun.yaml that is not itself a run folder."""
    from cnnlab.runs.layout import is_run_dir
    from cnnlab.runs.sweep_resume import is_sweep_dir

    values = [Path(a.split("=", 1)[1]).expanduser() for a in args if "=" in a and a.split("=", 1)[0] == "resume"]
    return len(values) == 1 and is_sweep_dir(values[0]) and not is_run_dir(values[0])


def cross_validation_args(args: list[str]) -> list[str]:
    """`cv.folds=K` -> a multirun over `cv.fold=0,...,K-1` (each job validates on its fold); unchanged when no
    cv.folds is given or a cv.fold is (one fold of a cross-validation, or a resumed fold)."""
    found = [a.split("=", 1)[1] for a in args if "=" in a and a.split("=", 1)[0].lstrip("+~") == "cv.folds"]
    if not found or any(a.split("=", 1)[0].lstrip("+~") == "cv.fold" for a in args if "=" in a):
        return args
    value = found[-1].strip()
    if value.lower() == "null":
        return args
    if not value.isdigit() or int(value) < 2:
        raise ConfigError("cv.folds", value, message=(
            f"cv.folds={value} is not allowed: one whole number of folds, 2 or more (e.g. cv.folds=5); "
            "to sweep other keys across the folds, add them with -m"))
    folds = int(value)
    multirun = [] if any(a in ("-m", "--multirun") for a in args) else ["-m"]
    return [*multirun, *args, "cv.fold=" + ",".join(str(fold) for fold in range(folds))]


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


def _print_model_summary(layers: tuple[list[Any], int, int], cfg: DictConfig, run_dir: Path) -> int:
    """The layer table of `summarize_model` on the console and in model_summary.txt; returns the parameter count.

    A sweep prints each model's table once (each run folder still gets its model_summary.txt)."""
    from pytorch_lightning.utilities import rank_zero_only
    from rich.console import Console

    from cnnlab.models.summary import render

    rows, total, trainable = layers
    if rank_zero_only.rank != 0:  # DDP: one process prints and writes the run folder
        return total
    name, target = _choices().get("model", ""), str(cfg.model.get("_target_"))
    title = name if target.startswith("cnnlab.") else f"{name} ({target})".lstrip()  # a user's class: its path
    table = render(rows, total, trainable, title=f"Model summary: {title}")
    from hydra.types import RunMode

    from cnnlab.runs.layout import MODEL_SUMMARY_FILE
    from cnnlab.runs.write import writing

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else str(run_dir)
    shown = (sweep, tuple(str(row) for row in rows))
    if shown not in _SUMMARIES_SHOWN:
        _SUMMARIES_SHOWN.add(shown)
        Console().print(table)
    with writing(run_dir / MODEL_SUMMARY_FILE), (run_dir / MODEL_SUMMARY_FILE).open("w") as handle:
        Console(file=handle, width=120).print(table)
    return total


def run(cfg: DictConfig) -> float | None:
    """Train and test one configuration in Hydra's run folder; returns the best monitored value."""
    if cfg.get("ckpt_path") is not None:  # a continued run's config comes from files on disk: data, allow-listed
        from cnnlab.config import check_targets

        check_targets(cfg, f"the saved config of {HydraConfig.get().runtime.output_dir}",
                      trust=os.environ.get(TRUST_ENV) == "1")
    validate(cfg)
    from cnnlab.train.environment import quiet_libraries

    quiet_libraries()
    import pytorch_lightning as pl

    from cnnlab.runs.diagnosis import diagnose
    from cnnlab.runs.read import best_epoch, read_metrics
    from cnnlab.runs.write import write_summary
    from cnnlab.train import environment, executions, failures, resume
    from cnnlab.train.build import build_datamodule, build_module, plain_config, summarize_model
    from cnnlab.train.callbacks import RunLog, run_callbacks
    from cnnlab.train.checkpoint import AtomicCheckpointIO
    from cnnlab.train.distributed import local_ranks
    from cnnlab.train.fastpaths import CallbackGroup
    from cnnlab.train.interrupts import StopRequest, raise_if_stop_requested
    from cnnlab.train.loggers import build_loggers
    from cnnlab.train.trained import set_tta

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
    # The model first: its one forward pass (the layer summary) checks the input size before the data is read.
    module = build_module(cfg)
    layers = summarize_model(module.model, cfg, module.objective.output_units(
        cfg.dataset.num_classes, cfg.dataset.get("multilabel", False)))
    datamodule.setup("fit")
    params = _print_model_summary(layers, cfg, run_dir)

    title = " ".join(f"{g}={choices[g]}" for g in ("model", "loss", "optimizer", "scheduler") if g in choices)
    # The logger and callbacks config groups (conf/logger/, conf/callbacks/); the run's own callbacks stay on.
    loggers = build_loggers(cfg, run_dir)
    stop = StopRequest()
    trainer = pl.Trainer(
        **trainer_kwargs(cfg),
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=CallbackGroup.grouped(run_callbacks(cfg, run_dir, mode, title, stop)),
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        enable_progress_bar=cfg.progress_bar != "none",
    )
    environment.set_threads(cfg.get("threads"))
    environment.compile_model(module, cfg.get("compile"), on_gpu=trainer.strategy.root_device.type == "cuda")
    # steps_per_execution: K optimizer steps per Lightning step (auto measures the model's step here)
    steps_per_call, step_seconds = executions.resolve(cfg, module, datamodule, trainer.strategy.root_device,
                                                      resumed, world_size=trainer.world_size)
    executions.install(trainer, module, datamodule, steps_per_call)
    summary: dict[str, Any] = {
        "status": "running", "error": None, "choices": choices, "overrides": _overrides(), "monitor": cfg.monitor,
        "mode": mode, "params": params, "split_sizes": datamodule.split_sizes(), "seed": cfg.seed,
        "debug": cfg.debug.name if cfg.get("debug") else None,
        "experiment": cfg.experiment.name if cfg.get("experiment") else None,
        "host": socket.gethostname(), "pid": os.getpid(), "world_size": trainer.world_size,
        "speed": environment.settings(cfg, trainer),
        # The user's config folders this run was composed from: `resume=` searches them again by itself.
        "config_dirs": config_folders_of(HydraConfig.get().runtime.config_sources), "workdir": str(Path.cwd()),
    }
    summary["speed"]["steps_per_execution"] = steps_per_call if not module.automatic_optimization else 1
    if step_seconds is not None:
        summary["speed"]["step_ms"] = round(step_seconds * 1000, 3)  # auto's measurement of one forward/backward
    if cfg.test and cfg.get("tta", "none") != "none":
        summary["test_tta"] = cfg.tta  # the views the test metrics were averaged over
    if cfg.get("cv") and cfg.cv.get("folds"):
        summary["cv"] = {"folds": cfg.cv.folds, "fold": cfg.cv.fold}
    if resumed is not None:
        summary["resumed_from"] = {"checkpoint": _in_run(cfg.ckpt_path, run_dir), "step": resumed["global_step"]}
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
            set_tta(module, cfg, cfg.get("tta", "none"))
            results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        raise_if_stop_requested(trainer)
    if not trainer.is_global_zero:  # DDP: rank 0 alone writes the run folder and reports
        return None
    if cfg.test:
        _log_confusion(loggers, module, datamodule.class_names)

    rows = read_metrics(run_dir)
    best = best_epoch(rows, monitor_column, mode)
    summary["speed"].update(environment.settings(cfg, trainer), data_on_device=datamodule.splits_on_device())
    summary.update({
        "status": "completed",
        "epochs": len(rows),
        "steps": trainer.global_step,
        "best": best,
        "best_checkpoint": _in_run(checkpoint.best_model_path, run_dir)
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
    _log_hparams(loggers, cfg, choices, best, test_metrics, monitor_column, trainer.global_step)
    _print_result(summary)
    return None if best is None else best[monitor_column]


def _in_run(path: Any, run_dir: Path) -> str:
    """A path as summary.json records it: relative to the run folder when inside it (a moved run stays whole)."""
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


def _log_confusion(loggers: list[Any], module: Any, class_names: list[str]) -> None:
    if module.confusion is None or not loggers:
        return
    from cnnlab.runs.write import confusion_figure
    from cnnlab.train.loggers import log_figure

    log_figure(loggers, "test/confusion_matrix", confusion_figure(module.confusion, class_names))


def _log_hparams(loggers: list[Any], cfg: DictConfig, choices: dict[str, str], best: dict | None,
                 test_metrics: dict[str, float], monitor_column: str, step: int) -> None:
    from cnnlab.train.loggers import log_hyperparameters

    params: dict[str, Any] = {g: v for g, v in choices.items() if g != "trainer"}
    params.update({"lr": cfg.optimizer.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                   "max_epochs": cfg.trainer.max_epochs})
    params.update(_overridden_values(cfg, choices))
    metrics = {f"hparams/{k}": v for k, v in test_metrics.items()}
    if best is not None:
        metrics[f"hparams/best_{monitor_column}"] = best[monitor_column]
    log_hyperparameters(loggers, params, metrics, step)


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
            if OmegaConf.is_dict(value):  # a group's options (logger=[tensorboard,csv]): as typed, not the node
                value = override.split("=", 1)[1] if "=" in override else None
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
        column = "val_ema_acc" if summary.get("monitor", "").startswith("val_ema/") else "val_acc"
        parts.append(f"best {column} {best.get(column) or float('nan'):.4f} (epoch {int(best['epoch'])})")
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

    _note_run_dir()
    try:
        return run(cfg)
    except BaseException as error:
        if _raising() and isinstance(error, Exception) and HydraConfig.get().mode != RunMode.MULTIRUN:
            raise  # cnnlab.api: the caller gets the error (as ConfigError when it is the user's)
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
