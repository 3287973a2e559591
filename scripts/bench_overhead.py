"""How much does cnnlab cost over a bare PyTorch loop? Prints median images/s of each and their ratio.

Same model (built by cnnlab's own builder, same seed), same data (preloaded tensors), same batch size and
optimizer; cnnlab runs through the real `cnnlab train` entry point in this process. The two alternate, several
repeats; the median images/s of each and the median of the per-pair time ratios are printed. Also prints start-up
figures: `cnnlab --help`, `cnnlab list`, `cnnlab train --help`, `python -c "import pytorch_lightning"`, and
command-to-first-training-step.

    python scripts/bench_overhead.py                  # lenet + mlp on Fashion-MNIST, resnet18 on synthetic 32x32x3
    python scripts/bench_overhead.py --cases mlp --steps 300 --repeats 9 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "lenet": ["model=lenet", "dataset=fashion_mnist"],
    "mlp": ["model=mlp", "dataset=fashion_mnist"],
    "resnet18": ["model=resnet18", "dataset=synthetic", "dataset.channels=3", "dataset.image_size=32",
                 "dataset.source.num_train=4000"],
}


def compose(overrides: list[str]):
    from cnnlab.config import compose as compose_config

    return compose_config(overrides)


def bare_loop(overrides: list[str], steps: int, batch_size: int) -> float:
    """images/s of the tightest plain loop: preloaded normalised tensors, model, Adam, cross-entropy."""
    import torch
    import torch.nn.functional as F

    from cnnlab.build import build_datamodule, build_model

    # A plain script never imports Lightning, which sets this and so makes every Adam step on a machine without a
    # GPU probe for one (cnnlab unsets it on CPU runs too: cnnlab.speed.skip_gpu_probe_per_step).
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    cfg = compose(overrides)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    images, labels = datamodule.splits["train"]
    inputs = datamodule.normalize(images)  # preloaded float tensors: the bare loop's best case
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for step in range(steps):
        index = order[(step * batch_size) % (len(labels) - batch_size):][:batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs[index]), labels[index])
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def cnnlab_run(overrides: list[str], steps: int, batch_size: int, threads: int) -> float:
    """images/s of `cnnlab train` over the same number of steps (training epoch time, validation off)."""
    from cnnlab.cli import main

    with tempfile.TemporaryDirectory() as run_dir:
        code = main(["train", *overrides, f"batch_size={batch_size}", f"trainer.max_steps={steps}",
                     f"threads={threads}", "trainer.limit_val_batches=0", "test=false", "progress_bar=none",
                     f"hydra.run.dir={run_dir}"])
        if code != 0:
            raise SystemExit(f"cnnlab train failed with exit code {code}")
        with (Path(run_dir) / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
    seconds = sum(float(r["epoch_time_s"]) for r in rows)
    return steps * batch_size / seconds


def timed(command: list[str], repeats: int = 3) -> float:
    """Median wall time of a command, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_step_seconds() -> float:
    """Seconds from launching `cnnlab train` to its first training step (read from a marker the run writes)."""
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.time()
        subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", "dataset=synthetic", "model=mlp",
                        "trainer.max_steps=1", "trainer.limit_val_batches=0", "test=false", "progress_bar=none",
                        f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        first = json.loads((Path(run_dir) / "summary.json").read_text())["first_step_at"]
    return first - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default="auto", help="torch CPU threads for both (cnnlab's `threads` key)")
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

    import torch

    from cnnlab.speed import set_threads

    threads = set_threads(args.threads)
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs; median of {args.repeats} "
          f"alternating pairs of {args.steps} steps (batch {args.batch_size})")
    print(f"{'case':10} {'bare img/s':>12} {'cnnlab img/s':>13} {'cnnlab/bare time':>17}  per-pair ratios")
    for case in args.cases:
        bare, ours = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(CASES[case], args.steps, args.batch_size))
            ours.append(cnnlab_run(CASES[case], args.steps, args.batch_size, threads))
        # Each pair ran back to back, so its ratio is steadier than the ratio of medians on a noisy machine.
        ratios = [b / o for b, o in zip(bare, ours)]
        pairs = " ".join(f"{r:.2f}" for r in ratios)
        print(f"{case:10} {statistics.median(bare):12.0f} {statistics.median(ours):13.0f} "
              f"{statistics.median(ratios):17.3f}  {pairs}", flush=True)

    if not args.skip_startup:
        python = sys.executable
        print("\nstart-up (median of 3, seconds)")
        rows = [
            ("cnnlab --help", [python, "-m", "cnnlab.cli", "--help"]),
            ("cnnlab list", [python, "-m", "cnnlab.cli", "list"]),
            ("cnnlab train --help", [python, "-m", "cnnlab.cli", "train", "--help"]),
            ("import torch", [python, "-c", "import torch"]),
            ("import pytorch_lightning", [python, "-c", "import pytorch_lightning"]),
        ]
        for name, command in rows:
            print(f"  {name:28} {timed(command):6.2f}")
        print(f"  {'command -> first train step':28} {first_step_seconds():6.2f}")


if __name__ == "__main__":
    main()
