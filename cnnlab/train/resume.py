"""Resuming a run exactly: `cnnlab train resume=RUN_DIR` or `ckpt_path=FILE` continues it where its checkpoint left off.

How new overrides interact with the saved run:
- `resume=RUN_DIR` re-composes the run's own overrides (RUN_DIR/.hydra/overrides.yaml) in the same folder and
  continues RUN_DIR/checkpoints/last.ckpt. On top of them only the keys in RESUMABLE may be given (train longer,
  move to another device, skip the test, ...); anything else is refused, since the optimizer, scheduler and
  data order restored from the checkpoint would no longer match it. Start a new run to change the rest.
- `ckpt_path=FILE` does the same with FILE when it lies in a run folder (RUN_DIR/checkpoints/FILE); a checkpoint
  from elsewhere starts a new run folder, and the overrides given must compose the checkpoint's config.
- In both cases the composed config is compared with the config stored in the checkpoint before anything is
  written: a difference outside RESUMABLE (say conf/ was edited since) is one clear error.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics import Metric

from cnnlab.config import check_saved_overrides, check_targets, config_folders_of, upgrade
from cnnlab.errors import ConfigError
from cnnlab.runs.layout import CHECKPOINT_DIR, LAST, RUN_HYDRA, RUN_OVERRIDES, SUMMARY_FILE, is_run_dir
from cnnlab.runs.read import read_metrics, read_summary
from cnnlab.runs.write import write_metrics
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.executions import check_resume
from cnnlab.train.optim import sized_by_run

# Keys a resumed run may change: how long it trains, where and how fast, what it prints, whether and how it tests at
# the end.
RESUMABLE = ("trainer.max_epochs", "trainer.max_steps", "trainer.accelerator", "trainer.devices", "progress_bar",
             "test", "tta", "data_dir", "num_workers", "dataset.source.num_workers", "threads", "compile",
             "data_on_device", "trainer.log_every_n_steps", "ckpt_path")
_PLAIN = re.compile(r"^[\w./:@~+-]*$")


def _quote(value: str) -> str:
    """A path as a Hydra override value (quoted unless it is plain)."""
    if _PLAIN.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _run_dir_of(value: str) -> tuple[Path, Path]:
    run_dir = Path(value).expanduser().resolve()
    if not run_dir.is_dir() or not is_run_dir(run_dir) or not (run_dir / RUN_OVERRIDES).is_file():
        raise ConfigError("resume", value, "a run folder written by cnnlab train (it holds .hydra/config.yaml and "
                                           ".hydra/overrides.yaml)")
    checkpoint = run_dir / LAST
    if not checkpoint.is_file():
        raise ConfigError("resume", value, message=(
            f"resume={value}: the run has no {LAST} to continue from (it stopped before its first checkpoint); "
            "start it again"))
    return run_dir, checkpoint


def _checkpoint_of(value: str) -> tuple[Path | None, Path]:
    checkpoint = Path(value).expanduser().resolve()
    if not checkpoint.is_file():
        raise ConfigError("ckpt_path", value, "an existing checkpoint file (a .ckpt written by cnnlab train)")
    run_dir = checkpoint.parent.parent
    in_run = checkpoint.parent.name == CHECKPOINT_DIR and is_run_dir(run_dir) and (run_dir / RUN_OVERRIDES).is_file()
    return (run_dir if in_run else None), checkpoint


def _saved_overrides(run_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(run_dir / RUN_OVERRIDES)]


def hydra_args(args: list[str], trust: bool = False) -> list[str]:
    """Turn `resume=RUN_DIR` / `ckpt_path=FILE` into the Hydra arguments that continue that run; others unchanged.

    The saved checkpoint's config and the run's saved overrides are data read from disk: targets off the allow-list
    are refused (unless `trust`), and saved overrides may not touch Hydra's own settings (its callbacks, launcher).
    The config they compose is checked again, resolved, as the run starts (`check_resumed`).
    """
    chosen = [a for a in args if _key(a) in ("resume", "ckpt_path") and "=" in a]
    if not chosen:
        return args
    if len(chosen) > 1:
        raise ConfigError("resume", " ".join(chosen), "only one of resume=RUN_DIR or ckpt_path=FILE")
    key, value = _key(chosen[0]), chosen[0].split("=", 1)[1]
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError(key, value, message=f"{key}={value} continues one run: leave out -m (resume sweep runs "
                                              "one by one)")
    run_dir, checkpoint = _run_dir_of(value) if key == "resume" else _checkpoint_of(value)
    # A corrupt or foreign file is refused here, before anything is written; its config is data (allow-list).
    check_targets(upgrade(load_checkpoint(checkpoint)["cnnlab"]["config"]), str(checkpoint), trust=trust)
    new = [a for a in args if a != chosen[0]]
    if run_dir is None:
        return [*new, f"ckpt_path={_quote(str(checkpoint))}"]
    overrides = [a for a in new if "=" in a and not a.startswith("-")]
    for override in overrides:
        name = _key(override)
        if name not in RESUMABLE and not name.startswith("hydra."):
            raise ConfigError(name, override.split("=", 1)[1], message=(
                f"{override}: a resumed run keeps its saved config; only {', '.join(RESUMABLE[:-1])} may change "
                "(start a new run to change the rest)"))
    given = {_key(o) for o in overrides}
    saved = [o for o in _saved_overrides(run_dir) if _key(o) not in given and _key(o) not in ("ckpt_path", "resume")]
    if not trust:
        check_saved_overrides(saved, run_dir / RUN_OVERRIDES)
    return [*saved, *new, f"hydra.run.dir={_quote(str(run_dir))}", f"ckpt_path={_quote(str(checkpoint))}"]


def recorded_config_dirs(args: list[str]) -> list[str]:
    """The user's config folders the run that `resume=RUN_DIR` / `ckpt_path=FILE` continues was composed from
    (Hydra's config_sources in its .hydra/hydra.yaml), so they are searched again with no --config-dir repeated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    chosen = [a for a in args if _key(a) in ("resume", "ckpt_path") and "=" in a]
    if len(chosen) != 1:
        return []
    key, value = _key(chosen[0]), chosen[0].split("=", 1)[1]
    run_dir = _run_dir_of(value)[0] if key == "resume" else _checkpoint_of(value)[0]
    if run_dir is None:
        return []
    try:
        sources = OmegaConf.to_container(OmegaConf.load(run_dir / RUN_HYDRA).hydra.runtime.config_sources)
    except (OSError, OmegaConfBaseException, AttributeError, ValueError):
        return []  # a run without the file (or an unreadable one): only this process's folders are searched
    folders = config_folders_of([s for s in sources if isinstance(s, dict)]) if isinstance(sources, list) else []
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(key, value, message=(
                f"{key}={value}: the run was composed with configs from {folder}, which no longer exists; put it "
                "back to continue the run"))
    return folders


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def check_same_config(config: dict[str, Any], saved: dict[str, Any], checkpoint: str) -> None:
    """ConfigError at the first key outside RESUMABLE where `config` differs from the checkpoint's `saved` config."""
    now, before = _flatten(config), _flatten(saved)
    for key in now.keys() & before.keys():
        if now[key] != before[key] and not key.startswith((*RESUMABLE, "fault_injection.")):
            raise ConfigError(key, now[key], message=(
                f"{key}={now[key]!r} differs from the {before[key]!r} that {checkpoint} was trained with; a resumed "
                f"run keeps its config (only {', '.join(RESUMABLE[:-1])} may change)"))


def load_for_resume(cfg: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint named by cfg.ckpt_path, checked against the composed config; None for a fresh run."""
    path = cfg.get("ckpt_path")
    if path is None:
        return None
    checkpoint = load_checkpoint(path)
    saved = upgrade(checkpoint["cnnlab"]["config"])
    check_same_config(config, saved, str(path))
    check_resume(cfg, saved, str(path))  # also for runs saved before steps_per_execution existed
    check_schedule_length(cfg, saved, checkpoint, str(path))
    return checkpoint


def _run_steps(max_epochs: Any, max_steps: Any, steps_per_epoch: int) -> int | None:
    """A run's length in optimizer steps, as Lightning bounds it (None: no set end)."""
    bounds = [steps_per_epoch * max_epochs] if isinstance(max_epochs, int) and max_epochs >= 0 else []
    bounds += [max_steps] if isinstance(max_steps, int) and max_steps >= 0 else []
    return min(bounds) if bounds else None


def check_schedule_length(cfg: Any, saved: dict[str, Any], checkpoint: dict[str, Any], path: str) -> None:
    """ConfigError when a resumed run would train past the end of a schedule sized by its length (onecycle,
    cosine, multistep, warmup_fraction): the restored schedule keeps the length it was built for, and a one-cycle
    stepped past it fails inside torch while a cosine turns back up. Training for as long or shorter is fine.
    Checkpoints written before the length was recorded are not checked."""
    recorded = checkpoint.get("cnnlab") or {}
    old_steps, per_epoch = recorded.get("run_steps"), recorded.get("steps_per_epoch")
    sized = sized_by_run(cfg.scheduler)
    if sized is None or not isinstance(old_steps, int) or not isinstance(per_epoch, int):
        return
    trainer = cfg.trainer
    before = saved.get("trainer") or {}
    if (trainer.get("max_epochs"), trainer.get("max_steps", -1)) == (before.get("max_epochs"),
                                                                     before.get("max_steps", -1)):
        return
    steps = _run_steps(trainer.get("max_epochs"), trainer.get("max_steps", -1), per_epoch)
    if steps is not None and steps <= old_steps:
        return
    length = "no set end" if steps is None else f"{steps} optimizer steps"
    raise ConfigError("trainer.max_steps", trainer.get("max_steps", -1), message=(
        f"{sized} was sized for the {old_steps} optimizer steps {path} was trained for, and a resumed run keeps its "
        f"schedule: it cannot train on to {length} under it (trainer.max_epochs={trainer.get('max_epochs')}, "
        f"trainer.max_steps={trainer.get('max_steps', -1)}); resume for at most that long, or start a new run"))


def trim_metrics(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Drop metrics.csv rows of epochs the checkpoint had not reached: training redoes them. (The row of an epoch
    cut short by max_steps stays until a resumed run finishes that epoch and rewrites it.)"""
    rows = read_metrics(run_dir)
    kept = [row for row in rows if row.get("step") is not None and row["step"] <= checkpoint["global_step"]]
    if len(kept) != len(rows):
        write_metrics(run_dir, kept)


def previous_duration(run_dir: Path) -> float:
    """Seconds the run had already trained before this resume (from its summary.json)."""
    if not (Path(run_dir) / SUMMARY_FILE).is_file():
        return 0.0
    return float(read_summary(run_dir).get("duration_s") or 0.0)


# ------------------------------------------------------------------ what Lightning's checkpoint leaves out

def rng_states() -> dict[str, Any]:
    """Every global random generator's state, as tensors and plain lists (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def metric_states(module: torch.nn.Module) -> dict[str, Any]:
    """The accumulated state of every torchmetrics metric of `module` that has seen data."""
    states = {}
    for name, metric in module.named_modules():
        if isinstance(metric, Metric) and metric.update_count > 0:
            values = {key: [v.detach().clone() for v in value] if isinstance(value, list) else value.detach().clone()
                      for key, value in metric.metric_state.items()}
            states[name] = {"state": values, "update_count": metric.update_count}
    return states


def set_metric_states(module: torch.nn.Module, states: dict[str, Any]) -> None:
    metrics = dict(module.named_modules())
    for name, saved in states.items():
        metric = metrics.get(name)
        if metric is None:  # a checkpoint from an older cnnlab (other metric names): the epoch's means restart
            continue
        for key, value in saved["state"].items():
            device = metric.device
            setattr(metric, key, [v.to(device) for v in value] if isinstance(value, list) else value.to(device))
        metric._update_count = saved["update_count"]
        metric._computed = None


def epoch_unfinished(trainer: pl.Trainer) -> bool:
    """Whether the training epoch has batches left (mid-epoch, or an epoch ending early at trainer.max_steps).
    Counted in batches: with steps_per_execution the last call of an epoch may be cut short inside, which
    Lightning's count of calls does not show."""
    loader = trainer.train_dataloader
    per_epoch = getattr(loader, "batches_per_epoch", None)
    state = loader.state_dict() if per_epoch is not None and hasattr(loader, "state_dict") else {}
    if "batches_done" in state:
        return state["batches_done"] < per_epoch
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed < trainer.num_training_batches


class ResumeState(pl.Callback):
    """Saves what Lightning's own checkpoint leaves out; puts it back just before the first resumed step.

    That is the RNG states, partly accumulated metrics, and the training loader's position: Lightning saves the
    latter too, but never loads it back when `configure_optimizers` has already asked for the loader (to size
    a schedule through `estimated_stepping_batches`), as ours does.

    An epoch cut short (trainer.max_steps, trainer.max_time) ends with Lightning's epoch-end hooks, and the
    checkpoints written there would tell a resumed run that the epoch was done while the loader resumes inside it:
    the rest of that epoch would be counted as the next one, and a run with max_epochs would end an epoch early.
    Those checkpoints are written as the same step's mid-epoch checkpoint (what an interrupt after that step
    saves), with the epoch's metric sums from before the epoch-end reset; resuming continues the epoch exactly.
    """

    def __init__(self) -> None:
        self.trainer: pl.Trainer | None = None
        self.loaded: dict[str, Any] | None = None
        self.cut_short: dict[str, Any] | None = None  # the metric states of an epoch cut short, at its end

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cut_short = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Callbacks' epoch-end hooks run before the module's, which resets the epoch metrics; checkpoint callbacks
        # (monitoring ones) save after it.
        if epoch_unfinished(trainer):
            self.cut_short = metric_states(pl_module)

    def _in_cut_epoch_end(self, trainer: pl.Trainer | None) -> bool:
        """Inside the epoch-end hooks of an epoch cut short (processed, not yet completed)."""
        if self.cut_short is None or trainer is None:
            return False
        progress = trainer.fit_loop.epoch_progress.current
        return progress.processed == progress.completed + 1

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if not self._in_cut_epoch_end(trainer) or "loops" not in checkpoint:
            return
        fit_loop = checkpoint["loops"]["fit_loop"]
        epochs = fit_loop["epoch_progress"]
        # The counters as they stood after the step's on_train_batch_end, before the epoch end advanced them.
        for part in ("current", "total"):
            epochs[part]["processed"] -= 1
            fit_loop["epoch_loop.batch_progress"][part]["completed"] -= 1
        fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
        fit_loop["epoch_loop.batch_progress"]["is_last_batch"] = False  # a cut last call of steps_per_execution

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": rng_states(), "metrics": {}}
        if self.trainer is not None:
            if self._in_cut_epoch_end(self.trainer):
                state["metrics"] = self.cut_short
            elif epoch_unfinished(self.trainer):
                state["metrics"] = metric_states(self.trainer.lightning_module)
            loader = self.trainer.train_dataloader
            if hasattr(loader, "state_dict"):
                state["train_loader"] = loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The model is on its device, the sanity check is over, and the first batch is not drawn yet.
        if self.loaded is None:
            return
        loader = trainer.train_dataloader
        if "train_loader" in self.loaded and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self.loaded["train_loader"])
        set_metric_states(pl_module, self.loaded["metrics"])
        set_rng_states(self.loaded["rng"])
        self.loaded = None
