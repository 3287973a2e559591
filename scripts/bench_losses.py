"""Train LeNet on Fashion-MNIST with each loss for the same budget; print test accuracy and epoch time per loss.

    python scripts/bench_losses.py                      # every conf/loss option, 1 epoch of 300 batches each
    python scripts/bench_losses.py --batches 0 --epochs 2 --losses ce,nll,mse
    python scripts/bench_losses.py -- optimizer=sgd optimizer.lr=0.05   # anything after -- goes to every run

Each loss is one real `cnnlab train` run (same seed: same initial weights and batches), its run folder under
--out; the figures come from the run folders' summary.json and metrics.csv. Test accuracy is on the whole
official test set (10,000 images) with the best checkpoint by validation accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOSSES = sorted(path.stem for path in (REPO / "conf" / "loss").glob("*.yaml"))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated conf/loss options")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per loss (default 1)")
    parser.add_argument("--batches", type=int, default=300,
                        help="training batches per epoch (batch size 64); 0 = the whole training split")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_losses" / time.strftime("%Y%m%d-%H%M%S"))
    return parser.parse_args(argv), extra


def train(loss: str, args: argparse.Namespace, extra: list[str]) -> Path:
    """One `cnnlab train` run in its own process (so runs do not share warm-up); returns its folder."""
    run_dir = args.out / loss
    overrides = [f"loss={loss}", f"model={args.model}", f"dataset={args.dataset}", f"seed={args.seed}",
                 f"trainer.max_epochs={args.epochs}", "progress_bar=none", f"hydra.run.dir={run_dir}", *extra]
    if args.batches:
        overrides.append(f"+trainer.limit_train_batches={args.batches}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "bench.log").open("w") as log:
        result = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", *overrides], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"loss={loss} failed (exit {result.returncode}); see {run_dir / 'bench.log'}")
    return run_dir


def figures(run_dir: Path) -> dict[str, float]:
    summary = json.loads((run_dir / "summary.json").read_text())
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    epoch_times = [float(row["epoch_time_s"]) for row in rows]
    return {
        "test_acc": summary["test"]["test/acc"],
        "best_val_acc": summary["best"]["val_acc"],
        "epoch_time_s": sum(epoch_times) / len(epoch_times),
        "run_s": summary["duration_s"],
    }


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    losses = [name for name in args.losses.split(",") if name]
    unknown = sorted(set(losses) - set(LOSSES))
    if unknown:
        print(f"unknown loss option(s) {', '.join(unknown)}; choose from {', '.join(LOSSES)}", file=sys.stderr)
        return 2
    budget = f"{args.batches} batches of 64" if args.batches else "the whole training split"
    print(f"{args.model} on {args.dataset}, {args.epochs} epoch(s) of {budget} per loss, seed {args.seed}"
          + (f", overrides {' '.join(extra)}" if extra else "") + f"; runs in {args.out}", flush=True)
    results = {}
    for loss in losses:
        results[loss] = figures(train(loss, args, extra))
        print(f"  {loss}: test acc {results[loss]['test_acc']:.4f}", flush=True)
    print()
    print("| loss | test accuracy | best val accuracy | epoch time (s) | whole run (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for loss, row in sorted(results.items(), key=lambda item: -item[1]["test_acc"]):
        print(f"| {loss} | {row['test_acc']:.4f} | {row['best_val_acc']:.4f} | {row['epoch_time_s']:.1f} "
              f"| {row['run_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
