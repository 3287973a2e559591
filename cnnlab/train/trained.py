"""A trained run back as objects: from a run folder or checkpoint, for `eval` and `predict`.

The config comes from the run folder's `.hydra/config.yaml` when the checkpoint sits in a run folder (it keeps
interpolations, so `data_dir=...` reaches every key that reads it), else from the checkpoint itself
(`checkpoint["cnnlab"]["config"]`, plain resolved data). Objects are built by cnnlab/train/build.py, as in
training; callers validate the config (cnnlab.cli.common.restore_checked).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnnlab.config import check_targets, upgrade
from cnnlab.errors import ConfigError
from cnnlab.runs.layout import BEST, CHECKPOINT_DIR, LAST, RUN_CONFIG, SUMMARY_FILE

_ABSENT = object()

# What fixes the trained network: an override of these would evaluate another network than the one trained.
NETWORK_KEYS = ("model", "loss", "dataset.num_classes", "dataset.channels", "dataset.image_size",
                "dataset.multilabel", "seeds.init")
# Overrides that only say where the data is and how it is loaded: the numbers stay those of the run's own eval.
DATA_LOADING_KEYS = ("data_dir", "dataset.source.data_dir", "dataset.root", "dataset.source.root",
                     "dataset.source.download", "dataset.source.system_dirs", "dataset.source.cache",
                     "dataset.source.cache_max_mb", "dataset.source.num_workers", "num_workers", "batch_size",
                     "trainer.accelerator", "trainer.devices", "threads", "data_on_device", "progress_bar",
                     "dataset.flip_ok")  # flip_ok only allows or refuses tta=flip, which names its file itself


def override_name(override: str) -> str:
    """The key an override sets (`+a.b=1` -> `a.b`)."""
    return override.split("=", 1)[0].lstrip("+~")


def changes_results(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides that may change what an evaluation measures (everything but data location and loading)."""
    return [o for o in overrides if override_name(o) not in DATA_LOADING_KEYS]


@dataclass
class Restored:
    """A checkpoint with the config to rebuild its objects (overrides applied)."""

    checkpoint_path: Path
    run_dir: Path | None  # the run folder the checkpoint belongs to, if it sits in one
    checkpoint: dict[str, Any]
    cfg: DictConfig
    config_source: str  # where the config came from, for the user

    @property
    def datamodule_state(self) -> dict[str, Any]:
        """What the datamodule saved in the checkpoint (normalisation statistics), if anything."""
        from cnnlab.data.datamodule import ImageDataModule

        return self.checkpoint.get(ImageDataModule.__qualname__) or {}


def find_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) for a checkpoint file or a run folder."""
    path = Path(path)
    if path.is_dir():
        checkpoint = _run_checkpoint(path)
        return checkpoint, path
    if not path.exists():
        raise ConfigError("path", str(path), message=f"{path} does not exist (give a checkpoint or a run folder)")
    run_dir = path.parent.parent
    return path, run_dir if (run_dir / RUN_CONFIG).is_file() else None


def _run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run tested: summary.json's best checkpoint, else best.ckpt, else last.ckpt."""
    candidates = []
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():
        try:
            best = json.loads(summary.read_text()).get("best_checkpoint")
        except (ValueError, AttributeError):
            best = None
        if best:
            candidates.append(run_dir / best)
    candidates += [run_dir / BEST, run_dir / LAST]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError("path", str(run_dir), message=(
        f"{run_dir} holds no checkpoint ({CHECKPOINT_DIR}/best.ckpt or last.ckpt): is it a cnnlab run folder?"))


def restore(path: str | Path, overrides: list[str] | tuple[str, ...] = (), trust: bool = False) -> Restored:
    """Load the checkpoint (weights only) and the run's config with Hydra-style overrides applied.

    The config is data read from disk: its `_target_`s are checked against the allow-list (cnnlab.config
    check_targets) after resolution and before anything is built; `trust` (the user's --trust) lets any pass.
    """
    from cnnlab.train.checkpoint import load_checkpoint

    checkpoint_path, run_dir = find_checkpoint(path)
    checkpoint = load_checkpoint(checkpoint_path)
    saved = OmegaConf.create(upgrade(checkpoint["cnnlab"]["config"]))
    cfg, source = saved, f"{checkpoint_path} (saved config)"
    if run_dir is not None:
        folder_cfg = _folder_config(run_dir)
        if folder_cfg is not None and _same_network(folder_cfg, saved):
            cfg, source = folder_cfg, str(run_dir / RUN_CONFIG)
    apply_overrides(cfg, list(overrides), resolved=cfg is saved)
    try:
        # Resolved into a new config: OmegaConf.resolve cannot put a resolver's list (imagefolder's class_names)
        # in place of its interpolation.
        struct = OmegaConf.is_struct(cfg)
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        OmegaConf.set_struct(cfg, struct)
    except OmegaConfBaseException as error:
        raise ConfigError("config", message=f"cannot resolve the run's config: {error}") from None
    check_targets(cfg, source, trust=trust)
    _check_importable(cfg, run_dir)
    return Restored(checkpoint_path, run_dir, checkpoint, cfg, source)


def _targets(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return found + [t for key, value in node.items() if key != "_target_" for t in _targets(value)]
    if isinstance(node, list):
        return [t for item in node for t in _targets(item)]
    return []


def _check_importable(cfg: DictConfig, run_dir: Path | None) -> None:
    """A run of the user's own classes (`my_models.MyNet`) needs their module here: one line saying where the run
    was trained (summary.json's workdir) when it is not importable, before anything is built."""
    import importlib.util

    for target in _targets(OmegaConf.to_container(cfg)):
        top = target.split(".", 1)[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            continue
        workdir = None
        if run_dir is not None and (run_dir / SUMMARY_FILE).is_file():
            try:
                workdir = json.loads((run_dir / SUMMARY_FILE).read_text()).get("workdir")
            except (ValueError, AttributeError):
                workdir = None
        where = f"run cnnlab from {workdir} (where the run was trained) or " if isinstance(workdir, str) else ""
        raise ConfigError("_target_", target, message=(
            f"the run's config names {target}, but module {top!r} is not importable here: {where}put the folder "
            "holding it on PYTHONPATH (or install your package)"))


def _folder_config(run_dir: Path) -> DictConfig | None:
    try:
        cfg = OmegaConf.create(upgrade(OmegaConf.to_container(OmegaConf.load(run_dir / RUN_CONFIG))))
    except (OSError, OmegaConfBaseException, ValueError):
        return None
    return cfg if isinstance(cfg, DictConfig) else None


def _same_network(folder_cfg: DictConfig, saved: DictConfig) -> bool:
    """Whether the run folder's config describes the checkpoint's network and loss (else the checkpoint wins)."""
    try:
        resolved = OmegaConf.to_container(folder_cfg, resolve=True)
    except OmegaConfBaseException:
        return False
    plain = OmegaConf.to_container(saved)
    return all(resolved.get(key) == plain.get(key) for key in ("model", "loss"))


def apply_overrides(cfg: DictConfig, overrides: list[str], resolved: bool = False) -> None:
    """Apply Hydra-style `key=value`, `+key=value`, `++key=value` to a saved config, in place.

    In a resolved config (a checkpoint's own) interpolations are gone; overriding a top-level key then also
    replaces the copies of its old value that `${key}` had put under the same name (data_dir ->
    dataset.source.data_dir), so `data_dir=...` works the same whichever config was found.
    """
    if not overrides:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        reason = " ".join(str(error).split()).split(" See https")[0]
        raise ConfigError("overrides", " ".join(overrides), message=(
            f"cannot parse overrides {' '.join(overrides)!r}: {reason}")) from None
    OmegaConf.set_struct(cfg, True)
    for override in parsed:
        key, line = override.key_or_group, override.input_line
        if override.is_sweep_override():
            raise ConfigError(key, line, message=f"{line}: one value per key here (sweeps are for `cnnlab train -m`)")
        if override.is_delete():
            raise ConfigError(key, line, message=f"{line}: keys cannot be deleted from a trained run's config")
        value = override.value()
        current = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if current is _ABSENT and not (override.is_add() or override.is_force_add()):
            raise ConfigError(key, line, message=(
                f"unknown key '{key}': not in the run's config (add a new key with +{key}=VALUE)"))
        if isinstance(current, DictConfig) and not isinstance(value, dict):
            raise ConfigError(key, line, message=(
                f"{line}: a trained run's {key} cannot be swapped for another option; change single keys "
                f"such as {key}.NAME=VALUE"))
        if any(key == name or key.startswith(name + ".") for name in NETWORK_KEYS):
            raise ConfigError(key, line, message=(
                f"{line}: a trained run's network is fixed ({', '.join(NETWORK_KEYS)}): evaluating another one would "
                "report numbers no run had; train a new run to try it"))
        old = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        if resolved and "." not in key and current is not _ABSENT:
            for path in _copies(OmegaConf.to_container(cfg), key, old):
                OmegaConf.update(cfg, path, value, merge=True)


def _copies(container: Any, name: str, value: Any, prefix: str = "") -> list[str]:
    """Dotted paths (below the top level) of keys called `name` holding `value`."""
    found = []
    if isinstance(container, dict):
        for key, item in container.items():
            path = f"{prefix}{key}"
            if prefix and key == name and item == value:
                found.append(path)
            found += _copies(item, name, value, path + ".")
    return found


def build_trained_module(restored: Restored) -> Any:
    """The ClassifierModule of the run with the checkpoint's weights, in eval mode.

    When the run evaluates its weights' moving average (`ema.enabled` and `ema.evaluate`), `module.model` holds the
    averaged weights, so everything that reads the network (predict, export, inspect) uses them as the test step
    does.
    """
    from cnnlab.train.build import build_module

    module = build_module(restored.cfg)
    try:
        module.load_state_dict(restored.checkpoint["state_dict"])
    except RuntimeError as error:
        first = " ".join(str(error).split())[:200]
        raise ConfigError("checkpoint", str(restored.checkpoint_path), message=(
            f"the weights in {restored.checkpoint_path} do not fit the network its config describes ({first})"
        )) from None
    if module.test_with_ema:
        from cnnlab.train.ema import copy_averaged_weights

        copy_averaged_weights(module.ema, module.model)
    return module.eval()


def run_tta(restored: Restored) -> str:
    """The test-time augmentation the run was tested with (`tta`; none for runs saved before the key existed). A
    saved config is data: a mode outside data/tta.py's list is refused by set_tta, one line."""
    tta = restored.cfg.get("tta", "none")
    return tta if isinstance(tta, str) and tta else "none"


def set_tta(module: Any, cfg: DictConfig, tta: str) -> None:
    """Test-time augmentation (cnnlab/data/tta.py) for the module's test step and predictions, where the dataset
    allows it (`dataset.flip_ok`; runs saved before the key existed allow flips)."""
    from cnnlab.data.tta import check_for_dataset

    check_for_dataset(tta, cfg.dataset)
    module.tta = tta


def build_prediction_datamodule(restored: Restored, load_data: bool) -> Any:
    """The run's datamodule with the normalisation statistics it was trained with.

    With `load_data` the splits are read (eval); without, only a checkpoint that lacks the statistics (written
    before they were saved) makes it read the training data to compute them again.
    """
    from cnnlab.train.build import build_datamodule

    datamodule = build_datamodule(restored.cfg)
    state = restored.datamodule_state
    if load_data or not state:
        datamodule.setup("test")
    datamodule.load_state_dict(state)
    return datamodule


def fabric_for(cfg: DictConfig, accelerator: str | None = None) -> Any:
    """A one-device Lightning Fabric on the run's accelerator and precision (or the accelerator given)."""
    from lightning_fabric import Fabric

    chosen = accelerator or cfg.trainer.get("accelerator", "auto")
    try:
        return Fabric(accelerator=chosen, devices=1, precision=cfg.trainer.get("precision", "32-true"))
    except (RuntimeError, ValueError) as error:
        raise ConfigError("accelerator", chosen, message=f"accelerator {chosen!r}: {error}") from None
