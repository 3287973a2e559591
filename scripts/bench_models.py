"""Per catalogue model on 32x32x3 images (10 classes): parameters and forward+backward images/s on the CPU.

    python scripts/bench_models.py                      # every conf/model/*.yaml, ~2 s of timing each
    python scripts/bench_models.py resnet18 vgg16 --budget 5 --batch-size 32

Prints a Markdown table. Each model is built exactly as `cnnlab train model=NAME dataset=synthetic
dataset.channels=3 dataset.image_size=32` builds it (small-image stem for the torchvision networks).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlab.config import CONF_DIR  # noqa: E402
from cnnlab.train.build import build_model  # noqa: E402


def images_per_second(model: torch.nn.Module, batch_size: int, size: int, budget_s: float) -> float:
    """Forward + backward passes (cross-entropy on random labels) for about budget_s seconds, after one warm-up."""
    images = torch.randn(batch_size, 3, size, size)
    labels = torch.randint(0, 10, (batch_size,))
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    step()
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < budget_s:
        step()
        steps += 1
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="conf/model options (default: all)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per model (default 2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
    size = args.image_size
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{size}x{size}x3 images, 10 classes, ~{args.budget:g} s per model\n")
    print("| model | network | parameters | fwd+bwd images/s |")
    print("| --- | --- | ---: | ---: |")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name in names:
            cfg = compose("train", overrides=[f"model={name}", "dataset=synthetic", "dataset.channels=3",
                                              f"dataset.image_size={size}", "dataset.num_classes=10"])
            model = build_model(cfg)
            network = cfg.model.get("arch") or cfg.model["_target_"].rsplit(".", 1)[-1]
            params = sum(p.numel() for p in model.parameters())
            rate = images_per_second(model, args.batch_size, size, args.budget)
            print(f"| {name} | {network} | {params:,} | {rate:,.0f} |", flush=True)
            del model


if __name__ == "__main__":
    main()
