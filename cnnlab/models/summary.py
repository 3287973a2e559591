"""The model summary table printed at the start of a run: layer, output shape, parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[LayerRow], int, int]:
    """Rows for every leaf module run by one forward pass, and the total and trainable parameter counts."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            def hook(mod, _inp, out, name=name):
                shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
                rows.append(LayerRow(name, type(mod).__name__, shape, sum(p.numel() for p in mod.parameters())))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return rows, total, trainable


def render(rows: list[LayerRow], total: int, trainable: int, title: str = "Model summary"):
    """A rich Table of the rows with the totals as caption."""
    from rich.table import Table

    table = Table(title=title, caption=f"{total:,} parameters ({trainable:,} trainable)")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    for row in rows:
        table.add_row(row.name, row.kind, "x".join(map(str, row.output_shape)), f"{row.params:,}")
    return table
