"""The private names of other libraries that cnnlab leans on: if an upgrade moves one, this fails and says which.

pyproject.toml bounds these libraries to the minor versions the suite ran on; this is the check to run first when
widening a bound.
"""

from __future__ import annotations

import importlib

import pytest

# (module, dotted attribute path, what cnnlab uses it for)
PRIVATE = [
    ("pytorch_lightning.strategies.launchers", "_SubprocessScriptLauncher",
     "cnnlab.train.distributed: detect that Lightning would re-run the script for the other DDP ranks"),
    ("torchmetrics", "Metric._update_count", "cnnlab.train.resume: restore a metric's state mid-epoch"),
    ("torchmetrics", "Metric._computed", "cnnlab.train.resume: drop a cached value after restoring a state"),
    ("torchvision.transforms.v2", "RandAugment._apply_image_or_video_transform",
     "cnnlab.data.augment: apply one RandAugment/AutoAugment op per image on the batch"),
    ("torchvision.transforms.v2", "RandAugment._fill", "cnnlab.data.augment: the fill value of those ops"),
    ("torchvision.transforms.v2", "AutoAugment._policies", "cnnlab.data.augment: the learned AutoAugment policies"),
    ("torch.nn.init", "_calculate_fan_in_and_fan_out", "cnnlab.models.knobs: fan-in of weights for init schemes"),
    ("pytorch_lightning.callbacks", "RichProgressBar._get_train_description",
     "cnnlab.train.callbacks: the rich bar counts epochs from 1 (`Epoch 1/3`), as metrics.csv does"),
    ("pytorch_lightning.callbacks", "TQDMProgressBar._leave",
     "cnnlab.train.callbacks: the tqdm bar counts epochs from 1 (its on_train_epoch_start, redone)"),
    ("hydra.core.utils", "JobReturn._return_value", "cnnlab.runs.sweeps: the error a failed sweep job raised"),
    ("pytorch_lightning", "LightningModule._on_before_batch_transfer",
     "cnnlab.train.module: steps_per_execution takes each batch of a chunk through Lightning's per-batch path"),
    ("pytorch_lightning.loops", "_TrainingEpochLoop._batches_that_stepped",
     "cnnlab.train.module: steps_per_execution counts the loggers' step once per optimizer step, not per call"),
]


@pytest.mark.parametrize(("module", "path", "use"), PRIVATE, ids=[p[1] for p in PRIVATE])
def test_private_api_is_still_there(module: str, path: str, use: str):
    target = importlib.import_module(module)
    head, *rest = path.split(".")
    found = hasattr(target, head)
    obj = getattr(target, head, None)
    for name in rest:
        if isinstance(obj, type) and name not in dir(obj) and not _instance_attribute(obj, name):
            found = False
            break
        obj = getattr(obj, name, None)
    assert found, (f"{module}.{path} has moved or gone (used by {use}); adapt cnnlab before widening the version "
                   "bound in pyproject.toml")


def _instance_attribute(cls: type, name: str) -> bool:
    """Whether instances of `cls` get attribute `name` (set in __init__ rather than on the class)."""
    import inspect

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return f"self.{name}" in source or f"{name}:" in source
