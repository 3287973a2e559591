"""Resuming a run: `cnnlab train resume=RUN_DIR` or `ckpt_path=FILE` continues it where its checkpoint left off.

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

import re
from pathlib import Path
from typing import Any

from cnnlab.config import ConfigError

# Keys a resumed run may change: how long it trains, where and how fast, what it prints and whether it tests at the end.
RESUMABLE = ("trainer.max_epochs", "trainer.max_steps", "trainer.accelerator", "trainer.devices", "progress_bar",
             "test", "data_dir", "num_workers", "dataset.source.num_workers", "threads", "compile", "data_on_device",
             "trainer.log_every_n_steps", "ckpt_path")
LAST = Path("checkpoints") / "last.ckpt"
_PLAIN = re.compile(r"^[\w./:@~+-]*$")


def _quote(value: str) -> str:
    """A path as a Hydra override value (quoted unless it is plain)."""
    if _PLAIN.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file() and (path / ".hydra" / "overrides.yaml").is_file()


def _run_dir_of(value: str) -> tuple[Path, Path]:
    run_dir = Path(value).expanduser().resolve()
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        raise ConfigError("resume", value, "a run folder written by cnnlab train (it holds .hydra/config.yaml)")
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
    return (run_dir if checkpoint.parent.name == "checkpoints" and is_run_dir(run_dir) else None), checkpoint


def _saved_overrides(run_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]


def hydra_args(args: list[str]) -> list[str]:
    """Turn `resume=RUN_DIR` / `ckpt_path=FILE` into the Hydra arguments that continue that run; others unchanged."""
    chosen = [a for a in args if _key(a) in ("resume", "ckpt_path") and "=" in a]
    if not chosen:
        return args
    from cnnlab.checkpoint import load_checkpoint  # imports torch: only when a run is being continued
    if len(chosen) > 1:
        raise ConfigError("resume", " ".join(chosen), "only one of resume=RUN_DIR or ckpt_path=FILE")
    key, value = _key(chosen[0]), chosen[0].split("=", 1)[1]
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError(key, value, message=f"{key}={value} continues one run: leave out -m (resume sweep runs "
                                              "one by one)")
    run_dir, checkpoint = _run_dir_of(value) if key == "resume" else _checkpoint_of(value)
    load_checkpoint(checkpoint)  # a corrupt or foreign file is refused here, before anything is written
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
    return [*saved, *new, f"hydra.run.dir={_quote(str(run_dir))}", f"ckpt_path={_quote(str(checkpoint))}"]


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
    from cnnlab.checkpoint import load_checkpoint

    path = cfg.get("ckpt_path")
    if path is None:
        return None
    checkpoint = load_checkpoint(path)
    check_same_config(config, checkpoint["cnnlab"]["config"], str(path))
    return checkpoint


def trim_metrics(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Drop metrics.csv rows of epochs the checkpoint had not reached: training redoes them."""
    from cnnlab.runlog import read_metrics, write_metrics

    rows = read_metrics(run_dir)
    kept = [row for row in rows if row.get("step") is not None and row["step"] <= checkpoint["global_step"]]
    if len(kept) != len(rows):
        write_metrics(run_dir, kept)


def previous_duration(run_dir: Path) -> float:
    """Seconds the run had already trained before this resume (from its summary.json)."""
    from cnnlab.runlog import SUMMARY_FILE, read_summary

    if not (Path(run_dir) / SUMMARY_FILE).is_file():
        return 0.0
    return float(read_summary(run_dir).get("duration_s") or 0.0)
