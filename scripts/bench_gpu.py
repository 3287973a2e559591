"""Training images/s of `cnnlab train` with and without each speed option (made for a GPU; runs on the CPU too).

    python scripts/bench_gpu.py                                  # resnet18, synthetic 32x32x3, batch 256
    python scripts/bench_gpu.py --model lenet --batch-size 512 --repeats 5
    python scripts/bench_gpu.py --device cpu --steps 10 --variants plain bf16   # a quick check without a GPU

Each variant is a real run (validation off) of two epochs of `--steps` steps; images/s is read from the second
epoch's time in metrics.csv, so torch.compile's compilation and the first epoch's warm-up are left out. The
variants alternate, `--repeats` times, and the median is printed with its ratio to `plain`:

    plain            fp32, NCHW, eager, batches copied to the device every step
    bf16             trainer.precision=bf16-mixed
    channels_last    channels_last=true
    compile          compile=true (torch.compile, default mode)
    on_device        data_on_device=true (the dataset sits on the GPU; batches are cut there)
    all              every option above together
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
from pathlib import Path

VARIANTS = {
    "plain": [],
    "bf16": ["trainer.precision=bf16-mixed"],
    "channels_last": ["channels_last=true"],
    "compile": ["compile=true"],
    "on_device": ["data_on_device=true"],
    "all": ["trainer.precision=bf16-mixed", "channels_last=true", "compile=true", "data_on_device=true"],
}


def run(model: str, batch_size: int, steps: int, device: str, options: list[str]) -> float:
    """images/s of the second epoch of a two-epoch run."""
    from cnnlab.cli import main

    accelerator = "gpu" if device == "gpu" else "cpu"
    if not any(option.startswith("data_on_device=") for option in options):
        options = [*options, "data_on_device=false"]  # `auto` would keep a small dataset on the GPU
    with tempfile.TemporaryDirectory() as run_dir:
        code = main(["train", f"model={model}", "dataset=synthetic", "dataset.channels=3", "dataset.image_size=32",
                     f"dataset.source.num_train={batch_size * steps * 10 // 9 + batch_size}", "val_fraction=0.1",
                     f"batch_size={batch_size}", f"trainer.limit_train_batches={steps}", "trainer.max_epochs=2",
                     "trainer.limit_val_batches=0", f"trainer.accelerator={accelerator}", "test=false",
                     "progress_bar=none", *options, f"hydra.run.dir={run_dir}"])
        if code != 0:
            raise SystemExit(f"cnnlab train {' '.join(options)} failed with exit code {code}")
        with (Path(run_dir) / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
    return steps * batch_size / float(rows[-1]["epoch_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

    import torch

    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --device cpu, or on a machine with one")
    where = torch.cuda.get_device_name() if args.device == "gpu" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, synthetic 32x32x3, batch {args.batch_size}, {args.steps} steps an epoch; {where}; "
          f"torch {torch.__version__}; median of {args.repeats}")
    speeds: dict[str, list[float]] = {name: [] for name in args.variants}
    for _ in range(args.repeats):
        for name in args.variants:
            speeds[name].append(run(args.model, args.batch_size, args.steps, args.device, VARIANTS[name]))
    base = statistics.median(speeds["plain"]) if "plain" in speeds else None
    print(f"{'variant':15} {'images/s':>10} {'x plain':>8}")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"{name:15} {median:10.0f} {median / base if base else float('nan'):8.2f}")


if __name__ == "__main__":
    main()
