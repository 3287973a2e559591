"""cnnlab from Python (notebooks): train, load and compare over the same code as the commands.

    import cnnlab
    run = cnnlab.run(["model=lenet", "loss=nll", "trainer.max_epochs=2"], config_dir="conf")
    run.summary["test"], run.metrics[-1]["val_acc"], run.plot()
    trained = cnnlab.load(run.dir)            # or a checkpoint file
    probabilities = trained.predict(["cat.png", "dog.png"])
    table = cnnlab.compare([run, "outputs/runs/2026-01-01/12-00-00_lenet_ce"])

`cnnlab.run` is `cnnlab.api.train` (the name `cnnlab.train` is the package of training code). A user's mistake
raises cnnlab.errors.ConfigError with the one-line message the command prints; nothing calls sys.exit.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import ConfigError, user_message

PathLike = str | Path


@dataclass(frozen=True)
class Run:
    """A run folder, read when asked (summary.json, metrics.csv): what `cnnlab train` wrote."""

    dir: Path

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: status, choices, best and test metrics, diagnosis, ..."""
        from cnnlab.runs.layout import SUMMARY_FILE
        from cnnlab.runs.read import read_summary

        if not (self.dir / SUMMARY_FILE).is_file():
            raise ConfigError("run", str(self.dir), message=f"{self.dir} has no {SUMMARY_FILE}: not a finished run")
        return read_summary(self.dir)

    @property
    def metrics(self) -> list[dict[str, float | None]]:
        """metrics.csv: one dict per epoch (epoch, step, train_loss, train_acc, val_loss, val_acc, lr, ...)."""
        from cnnlab.runs.read import read_metrics

        return read_metrics(self.dir)

    @property
    def status(self) -> str:
        return str(self.summary.get("status"))

    def plot(self) -> Any:
        """The loss and accuracy curves as a matplotlib figure (what curves.png shows)."""
        from cnnlab.runs.write import curves_figure

        return curves_figure(self.metrics, title=self.dir.name)

    def load(self) -> Trained:
        """The trained network for inference (cnnlab.load)."""
        return load(self.dir)


@dataclass
class Trained:
    """A trained run for inference: the network, its preprocessing and its class names, as `cnnlab predict` uses."""

    model: Any  # torch.nn.Module in eval mode; raw outputs (logits for the usual losses)
    class_names: list[str]
    checkpoint: Path
    _restored: Any
    _datamodule: Any
    _objective: Any

    def preprocess(self, images: Sequence[Any]) -> Any:
        """A batch tensor for `model` from image files (any format Pillow reads) or uint8 (C, H, W) tensors:
        the run's channels and size, normalised with the statistics it was trained with."""
        import torch

        from cnnlab.data.arrays import fit_images
        from cnnlab.data.images import read_image

        cfg = self._restored.cfg
        tensors = [read_image(Path(item)) if isinstance(item, (str, Path)) else torch.as_tensor(item)
                   for item in images]
        return self._datamodule.normalize(torch.cat([fit_images(t, cfg.dataset.channels, cfg.dataset.image_size)
                                                     for t in tensors]))

    def probabilities(self, outputs: Any) -> Any:
        """The model's raw outputs as class probabilities (the loss's own head: softmax, sigmoid, ...)."""
        return self._objective.probabilities(outputs)

    def predict(self, images: Sequence[Any], tta: str | None = None) -> Any:
        """Class probabilities, (N, classes), for image files or uint8 tensors, averaged over the test-time views
        of `tta` (none, flip, shift, flip_shift; default: the run's own `tta`, as `cnnlab predict` uses)."""
        import torch

        from cnnlab.data.tta import check_for_dataset, views
        from cnnlab.train.trained import run_tta

        mode = run_tta(self._restored) if tta is None else tta
        check_for_dataset(mode, self._restored.cfg.dataset)
        with torch.inference_mode():
            probs = [self.probabilities(self.model(view)).float() for view in views(self.preprocess(images), mode)]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


def train(overrides: Sequence[str] = (), config_dir: PathLike | Sequence[PathLike] | None = None) -> Run:
    """Train one configuration as `cnnlab train OVERRIDES` does (same Hydra composition, same run folder).

    `config_dir`: folder(s) of your own configs, like `--config-dir` (conf/ in the working folder and
    CNNLAB_CONFIG_PATH are searched too). `resume=RUN_DIR` continues a run. Hydra's global state is cleared
    before and after, so runs in one process do not leak into each other.
    """
    from cnnlab.cli.train import RAISE_ERRORS, RUN_DIRS, hydra_run

    overrides = [str(o) for o in ([overrides] if isinstance(overrides, str) else overrides)]
    if any(o in ("-m", "--multirun") for o in overrides):
        raise ConfigError("overrides", "-m", message="cnnlab.run trains one configuration; sweep with "
                                                     "`cnnlab train -m` or call it once per configuration")
    dirs = [] if config_dir is None else [config_dir] if isinstance(config_dir, (str, Path)) else list(config_dir)
    found: list[Path] = []
    argv = sys.argv
    raising, collecting = RAISE_ERRORS.set(True), RUN_DIRS.set(found)
    try:
        hydra_run(overrides, [str(d) for d in dirs])
    except SystemExit as exit_:  # Hydra's own flags (--cfg, --help) print and exit
        if exit_.code not in (0, None):
            raise ConfigError("overrides", " ".join(overrides), message=(
                f"cnnlab train {' '.join(overrides)} stopped with exit code {exit_.code}")) from None
    except ConfigError:
        raise
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        raise ConfigError("overrides", " ".join(overrides), message=message) from None
    finally:
        RAISE_ERRORS.reset(raising)
        RUN_DIRS.reset(collecting)
        sys.argv = argv
    if not found:
        raise ConfigError("overrides", " ".join(overrides), message="no run was made (give overrides, not flags)")
    return Run(found[-1])


def load(path: PathLike | Run) -> Trained:
    """A trained run (its folder, or a checkpoint) for inference: weights-only loading and the checks of
    `cnnlab predict` (cnnlab.train.trained + cnnlab.cli.common.restore_checked)."""
    from cnnlab.cli.common import restore_checked
    from cnnlab.config import project_importable
    from cnnlab.train.trained import build_prediction_datamodule, build_trained_module

    project_importable()
    restored = restore_checked(path.dir if isinstance(path, Run) else path)
    datamodule = build_prediction_datamodule(restored, load_data=False)
    module = build_trained_module(restored)
    return Trained(module.model.eval(), list(datamodule.class_names), restored.checkpoint_path, restored,
                   datamodule, module.objective)


def compare(runs: Sequence[PathLike | Run], per_run: bool = False) -> list[dict[str, Any]]:
    """The `cnnlab compare` table as data: one dict per row (the differing settings, the runs, each metric as a
    float or None, `<metric>_std` when seeds are grouped, the diagnosis), best first. Ready for pandas.DataFrame."""
    from cnnlab.runs.compare import compare as compare_runs
    from cnnlab.runs.compare import load as load_runs
    from cnnlab.runs.compare import to_csv

    comparison = compare_runs(load_runs([r.dir if isinstance(r, Run) else Path(r) for r in runs]), per_run=per_run)
    numeric = {column.key for column in comparison.columns} | {f"{c.key}_std" for c in comparison.columns}
    numeric |= {"seeds", "failed"}
    rows = []
    for row in csv.DictReader(io.StringIO(to_csv(comparison))):
        rows.append({key: _number(value) if key in numeric else value for key, value in row.items()})
    return rows


def _number(text: str) -> float | None:
    try:
        return float(text) if text != "" else None
    except ValueError:
        return None
