"""How much does cnnlab cost over a bare PyTorch loop? Prints median images/s of each and their ratio.

Same model (built by cnnlab's own builder, same seed), same data (preloaded tensors), same batch size and
optimizer; cnnlab runs through the real `cnnlab train` entry point in this process, and the bare loop runs in
chunks between cnnlab's steps (see `interleaved`), so both meet the same machine speed. Several runs; the median
images/s of each and the median of the per-run time ratios are printed, and for reference the same ratio for a
minimal LightningModule on the bare loop's batches (what Lightning's own loop costs). Also prints start-up figures:
`cnnlab --help`, `cnnlab list`, `cnnlab train --help`, `python -c "import pytorch_lightning"`, and
command-to-first-training-step.

    python scripts/bench_overhead.py                  # lenet + mlp on Fashion-MNIST, steps_per_execution 1 and auto
    python scripts/bench_overhead.py --device cuda    # the same on a GPU, data on the device
    python scripts/bench_overhead.py --cases mlp --steps 600 --repeats 7 --threads 1
    python scripts/bench_overhead.py --cases resnet18 --steps 30 --repeats 3 --chunk 5 --skip-floor  # synthetic
                                                      # 32x32x3; ~1.4 s a step on 2 CPUs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = {
    "lenet": ["model=lenet", "dataset=fashion_mnist"],
    "mlp": ["model=mlp", "dataset=fashion_mnist"],
    "resnet18": ["model=resnet18", "dataset=synthetic", "dataset.channels=3", "dataset.image_size=32",
                 "dataset.source.num_train=4000"],
}


def compose(overrides: list[str]):
    from cnnlab.config import compose as compose_config

    return compose_config(overrides)


class BareLoop:
    """The tightest plain loop: preloaded normalised tensors, the same model (cnnlab's builder, same seed), Adam,
    cross-entropy. `steps(n)` runs n more steps and returns their seconds."""

    def __init__(self, overrides: list[str], batch_size: int, device: str = "cpu"):
        import torch

        from cnnlab.train.build import build_datamodule, build_model

        cfg = compose(overrides)
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        images, labels = datamodule.splits["train"]
        # preloaded float tensors on the device: the bare loop's best case
        self.inputs, self.labels = datamodule.normalize(images.to(device)), labels.to(device)
        self.device = torch.device(device)
        self.model = build_model(cfg).to(device)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optimizer.lr)
        self.order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(0)).to(device)
        self.batch_size, self.done = batch_size, 0

    def steps(self, count: int) -> float:
        import torch.nn.functional as F

        # A plain script never imports Lightning, which sets this and so makes every Adam step on a machine without
        # a GPU probe for one (cnnlab unsets it on CPU runs too: cnnlab.train.fastpaths.cpu_cuda_check).
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(count):
            first = (self.done * self.batch_size) % (len(self.labels) - self.batch_size)
            index = self.order[first:first + self.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(self.inputs[index]), self.labels[index])
            loss.backward()
            self.optimizer.step()
            self.done += 1
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def interleave_probe(bare: BareLoop, chunk: int) -> Any:
    """A callback that times a Lightning run between batch starts and runs `chunk` bare steps every `chunk` steps.

    cnnlab's (or Lightning's) time is the time between its batch starts, less those pauses. Both thus run in the
    same few hundred milliseconds again and again, so a machine whose speed drifts by +-20% from second to second
    (this one) still gives a steady ratio.
    """
    import pytorch_lightning as pl

    class Interleave(pl.Callback):
        def __init__(self) -> None:
            self.mark: float | None = None
            self.mark_step = 0
            self.ours = self.theirs = 0.0
            self.timed = self.bare_done = self.owed = 0

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            # A Lightning call makes one optimizer step, or several (steps_per_execution): steps are counted by
            # global_step, and the bare loop makes as many.
            now = time.perf_counter()
            step = trainer.global_step
            if self.mark is not None and self.mark_step >= 3:  # steps 1-3 warm up
                self.ours += now - self.mark
                self.timed += step - self.mark_step
                self.owed += step - self.mark_step
                if self.owed >= chunk:
                    self.theirs += bare.steps(self.owed)
                    self.bare_done, self.owed = self.bare_done + self.owed, 0
            self.mark, self.mark_step = time.perf_counter(), step

        def images_per_second(self, batch_size: int) -> tuple[float, float]:
            """(bare, run) images/s."""
            return self.bare_done * batch_size / self.theirs, self.timed * batch_size / self.ours

    bare.steps(3)  # warm-up, as the run's first steps are not timed either
    return Interleave()


def interleaved(overrides: list[str], steps: int, batch_size: int, threads: int, chunk: int,
                steps_per_execution: str = "1", device: str = "cpu") -> tuple[float, float, int]:
    """(bare, cnnlab images/s, cnnlab's steps per Lightning call) from one `cnnlab train` run with the bare loop run
    in between its steps."""
    import cnnlab.train.callbacks
    from cnnlab.cli import main

    probe = interleave_probe(BareLoop(overrides, batch_size, device), chunk)
    callbacks = cnnlab.train.callbacks.run_callbacks
    cnnlab.train.callbacks.run_callbacks = lambda *args, **kwargs: [*callbacks(*args, **kwargs), probe]
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            code = main(["train", *overrides, f"batch_size={batch_size}", f"trainer.max_steps={steps + 4}",
                         f"threads={threads}", "trainer.limit_val_batches=0", "test=false", "progress_bar=none",
                         f"steps_per_execution={steps_per_execution}", f"hydra.run.dir={run_dir}",
                         f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"])
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
    finally:
        cnnlab.train.callbacks.run_callbacks = callbacks
    if code != 0:
        raise SystemExit(f"cnnlab train failed with exit code {code}")
    return (*probe.images_per_second(batch_size), summary["speed"].get("steps_per_execution", 1))


def lightning_floor(overrides: list[str], steps: int, batch_size: int, chunk: int,
                    device: str = "cpu") -> tuple[float, float]:
    """(bare, minimal Lightning) images/s: a LightningModule with just the model, cross-entropy and Adam, fed the
    bare loop's preloaded batches, no logger, checkpoints or other callbacks. What Lightning's loop costs alone."""
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F

    from cnnlab.train.build import build_model

    bare = BareLoop(overrides, batch_size, device)
    probe = interleave_probe(bare, chunk)
    cfg = compose(overrides)

    class Batches:
        def __len__(self) -> int:
            return steps + 4

        def __iter__(self) -> Any:
            for step in range(steps + 4):
                index = bare.order[step * batch_size:(step + 1) * batch_size]
                yield bare.inputs[index], bare.labels[index]

    class Minimal(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model(cfg)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return F.cross_entropy(self.model(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.model.parameters(), lr=cfg.optimizer.lr)

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[probe], limit_val_batches=0,
                         accelerator="gpu" if device == "cuda" else "cpu", devices=1)
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # as cnnlab does on the CPU
    trainer.fit(Minimal(), train_dataloaders=Batches())
    return probe.images_per_second(batch_size)


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
    parser.add_argument("--cases", nargs="+", default=["lenet", "mlp"], choices=list(CASES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=10, help="bare steps run after every this many cnnlab steps")
    parser.add_argument("--threads", default="auto", help="torch CPU threads for both (cnnlab's `threads` key)")
    parser.add_argument("--steps-per-execution", nargs="+", default=["1", "auto"],
                        help="cnnlab's steps_per_execution values to measure, each a column")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: both loops (and the Lightning reference) on the GPU, data already on it")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--skip-floor", action="store_true",
                        help="leave out the minimal-LightningModule reference (Lightning/bare column)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

    import torch

    from cnnlab.train.environment import set_threads

    threads = set_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs; {args.steps} steps (batch "
          f"{args.batch_size}) a run, bare steps interleaved every {args.chunk}; median of {args.repeats} runs")
    columns = "".join(f" {'K=' + k + ' img/s':>13} {'/bare':>6}" for k in args.steps_per_execution)
    print(f"{'case':10} {'bare img/s':>11}{columns} {'Lightning/bare':>15}  K used; per-run ratios of the last K")
    for case in args.cases:
        bare, floors = [], []
        ours: dict[str, list[float]] = {k: [] for k in args.steps_per_execution}
        ratios: dict[str, list[float]] = {k: [] for k in args.steps_per_execution}
        used: dict[str, set[int]] = {k: set() for k in args.steps_per_execution}
        for _ in range(args.repeats):
            for spe in args.steps_per_execution:
                theirs, mine, steps_per_call = interleaved(CASES[case], args.steps, args.batch_size, threads,
                                                           args.chunk, spe, args.device)
                bare.append(theirs)
                ours[spe].append(mine)
                ratios[spe].append(theirs / mine)
                used[spe].add(steps_per_call)
            if not args.skip_floor:
                theirs, minimal = lightning_floor(CASES[case], args.steps, args.batch_size, args.chunk, args.device)
                floors.append(theirs / minimal)
        cells = "".join(f" {statistics.median(ours[k]):13.0f} {statistics.median(ratios[k]):6.3f}"
                        for k in args.steps_per_execution)
        floor = f"{statistics.median(floors):15.3f}" if floors else f"{'-':>15}"
        last = args.steps_per_execution[-1]
        runs = " ".join(f"{r:.2f}" for r in ratios[last])
        ks = ",".join(str(k) for k in sorted(used[last]))
        print(f"{case:10} {statistics.median(bare):11.0f}{cells} {floor}  K={ks}; {runs}", flush=True)

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
