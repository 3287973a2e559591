"""The fast paths give the plain paths' results: in-memory batches vs a torch DataLoader, channels_last vs not."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.build import build_datamodule, build_module
from cnnlab.config import compose


def losses_after_steps(module, batches, steps: int) -> list[float]:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    out = []
    for _, (images, labels) in zip(range(steps), batches):
        optimizer.zero_grad()
        loss = module.objective(module(images), labels)
        loss.backward()
        optimizer.step()
        out.append(loss.item())
    return out


def test_in_memory_loader_equals_a_dataloader_over_the_same_tensors():
    cfg = compose(["dataset=synthetic", "model=lenet", "shuffle=false"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    images, labels = datamodule.splits["train"]
    fast = ((datamodule.normalize(x), y) for x, y in datamodule.train_dataloader())
    plain_set = TensorDataset(datamodule.normalize(images), labels)  # the per-sample path: float tensors, collated
    plain = DataLoader(plain_set, batch_size=cfg.batch_size, shuffle=False)
    assert losses_after_steps(build_module(cfg), fast, 5) == losses_after_steps(build_module(cfg), plain, 5)


def test_channels_last_trains_to_the_same_loss():
    cfg = compose(["dataset=synthetic", "model=lenet", "shuffle=false"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    batches = [(datamodule.normalize(x), y) for _, (x, y) in zip(range(5), datamodule.train_dataloader())]
    plain = losses_after_steps(build_module(cfg), batches, 5)
    fast_cfg = compose(["dataset=synthetic", "model=lenet", "shuffle=false", "channels_last=true"])
    module = build_module(fast_cfg)
    assert module.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    fast = losses_after_steps(module, batches, 5)
    assert torch.allclose(torch.tensor(fast), torch.tensor(plain), rtol=1e-4, atol=1e-5)
    assert fast[-1] < fast[0]
    assert F.mse_loss(torch.tensor(fast), torch.tensor(plain)) < 1e-8
