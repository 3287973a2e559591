"""The run folder, named in one place: the contract between `cnnlab train` and everything after it.

A run folder holds (documented in README.md):
  .hydra/config.yaml     the composed config (unresolved)     .hydra/overrides.yaml  the overrides typed
  .hydra/hydra.yaml      Hydra's settings, with the option chosen in every group
  checkpoints/           best.ckpt (by the monitored metric) and last.ckpt (every epoch's end, interrupts)
  metrics.csv            one row per epoch                    summary.json           status, best/test metrics...
  curves.png             loss and accuracy curves             model_summary.txt      the layer table
  tb/                    TensorBoard events                   eval/                  `cnnlab eval` reports
  csv/, mlruns/          the csv and mlflow loggers' files, when those loggers are chosen (logger=...)
  export/                `cnnlab export` files + JSON         inspect/               `cnnlab inspect` PNGs
  .cnnlab.lock           while a process writes the run: its pid and host (cnnlab/runs/lock.py)
No torch here: `cnnlab compare` reads run folders instantly.
"""

from __future__ import annotations

from pathlib import Path

HYDRA_DIR = ".hydra"
RUN_CONFIG = f"{HYDRA_DIR}/config.yaml"
RUN_OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
RUN_HYDRA = f"{HYDRA_DIR}/hydra.yaml"
CHECKPOINT_DIR = "checkpoints"
BEST = f"{CHECKPOINT_DIR}/best.ckpt"
LAST = f"{CHECKPOINT_DIR}/last.ckpt"
METRICS_FILE, SUMMARY_FILE, CURVES_FILE = "metrics.csv", "summary.json", "curves.png"
MODEL_SUMMARY_FILE, TB_DIR, EVAL_DIR = "model_summary.txt", "tb", "eval"
# Where each built-in logger of conf/logger/ writes inside the run folder (by its key under `logger:`).
LOGGER_DIRS = {"tensorboard": TB_DIR, "csv": "csv", "mlflow": "mlruns"}
EXPORT_DIR, INSPECT_DIR = "export", "inspect"
LOCK_FILE = ".cnnlab.lock"
COLUMNS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")
# Written after val_acc by runs that average their weights (ema.enabled), and only by them.
EMA_COLUMNS = ("val_ema_loss", "val_ema_acc")


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / LAST


def best_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / BEST


def is_run_dir(path: Path) -> bool:
    """A folder Hydra made for one `cnnlab train` job: it holds .hydra/config.yaml."""
    return (Path(path) / RUN_CONFIG).is_file()


def holds_run(path: Path) -> bool:
    """Whether a folder already holds (part of) a run: its summary, metrics or checkpoints.

    Hydra's .hydra/ alone is not a run: a run refused by a config check leaves only that, and the same command,
    corrected, may use the folder."""
    path = Path(path)
    return any((path / name).exists() for name in (SUMMARY_FILE, METRICS_FILE, CHECKPOINT_DIR))


def find_runs(path: Path) -> list[Path]:
    """`path` itself when it is a run folder, else every run folder below it, in natural order (2 before 10)."""
    path = Path(path)
    if is_run_dir(path):
        return [path]
    found = [config.parent.parent for config in path.rglob(RUN_CONFIG)]
    return sorted(found, key=lambda p: [int(part) if part.isdigit() else part for part in p.relative_to(path).parts])


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
