"""Training images/s on Fashion-MNIST: cnnlab's in-memory batched path vs a per-sample torchvision Dataset.

Both paths run the same hand-written training loop (forward, loss, backward, Adam step) on the same model; only
where batches come from differs:
  in-memory   cnnlab's ImageDataModule: one uint8 tensor, InMemoryLoader slices a seeded batch, conversion and
              normalisation happen batched (what on_after_batch_transfer does)
  per-sample  torchvision.datasets.FashionMNIST + transforms.ToTensor/Normalize per image + DataLoader collate

With --augment it also times the batched augmentations per batch, and RandAugment / AutoAugment grouped per
operation (cnnlab) against torchvision's transform called once per image.

    python scripts/bench_data.py --steps 200                        # both paths, mlp and lenet
    python scripts/bench_data.py --steps 200 --threads 1 --augment  # a busy machine; plus augmentation costs
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlab.data.datamodule import ImageDataModule  # noqa: E402
from cnnlab.data.sources import fashion_mnist  # noqa: E402
from cnnlab.models.classic import MLP, KerasLeNet  # noqa: E402

MEAN, STD = 0.2860, 0.3530
MODELS: dict[str, Callable[[], torch.nn.Module]] = {"mlp": MLP, "lenet": KerasLeNet}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def in_memory_batches(data_dir: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    module = ImageDataModule(lambda: fashion_mnist(data_dir), channels=1, image_size=28, num_classes=10,
                             class_names=None, mean=[MEAN], std=[STD], batch_size=batch_size, val_fraction=0.1)
    module.setup()
    while True:
        for images, labels in module.train_dataloader():
            yield module.standardize(images.float().div_(255)), labels


def torchvision_root(data_dir: str, scratch: Path) -> Path:
    """Fashion-MNIST in torchvision's layout (root/FashionMNIST/raw, uncompressed), from where cnnlab finds it."""
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    candidates = [Path(data_dir).expanduser() / "fashion_mnist", Path("/usr/share/datasets/fashion-mnist")]
    source = next(c for c in candidates if (c / f"{RAW_FILES[0]}.gz").is_file() or (c / RAW_FILES[0]).is_file())
    for name in RAW_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, raw / name)
        else:
            with gzip.open(source / f"{name}.gz", "rb") as src, (raw / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return scratch


def per_sample_batches(root: Path, batch_size: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    while True:
        yield from loader


def images_per_second(model_name: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int,
                      warmup: int = 10) -> float:
    torch.manual_seed(0)
    model = MODELS[model_name]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    iterator = iter(batches)
    seen, started = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            seen, started = 0, time.perf_counter()
        images, labels = next(iterator)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen / (time.perf_counter() - started)


def ms_per_batch(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    iterator = iter(batches)
    next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return (time.perf_counter() - started) / steps * 1000


def bench_training(args: argparse.Namespace) -> None:
    print(f"Fashion-MNIST, batch {args.batch_size}, {args.steps} timed steps, {torch.get_num_threads()} torch "
          f"thread(s), per-sample DataLoader workers={args.workers}")
    with tempfile.TemporaryDirectory() as scratch:
        root = torchvision_root(args.data_dir, Path(scratch))
        fast = ms_per_batch(in_memory_batches(args.data_dir, args.batch_size), args.steps)
        slow = ms_per_batch(per_sample_batches(root, args.batch_size, args.workers), args.steps)
        print(f"data only, ms per batch: in-memory {fast:.3f}, per-sample {slow:.3f}")
        print(f"training images/s (best of {args.rounds} rounds, alternating paths):")
        print(f"{'model':<7}{'in-memory':>12}{'per-sample':>12}{'speed-up':>10}")
        for name in args.models:
            fast = slow = 0.0
            for _ in range(args.rounds):  # best of several: other processes on a shared machine only slow a run down
                fast = max(fast, images_per_second(name, in_memory_batches(args.data_dir, args.batch_size),
                                                   args.steps))
                slow = max(slow, images_per_second(name, per_sample_batches(root, args.batch_size, args.workers),
                                                   args.steps))
            print(f"{name:<7}{fast:>12,.0f}{slow:>12,.0f}{fast / slow:>9.2f}x", flush=True)


def _ms_per_call(function: Callable[[], object], repeats: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats * 1000


def bench_augmentation(args: argparse.Namespace) -> None:
    from torchvision.transforms import v2

    from cnnlab.data import augment

    batch = args.batch_size
    images = torch.rand(batch, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    print(f"\naugmentation cost per batch of {batch} 3x32x32 images (ms)")
    batched = {
        "flip": augment.RandomFlip(), "crop": augment.RandomCrop(), "affine": augment.RandomAffine(),
        "color": augment.ColorJitter(), "erasing": augment.RandomErasing(),
    }
    for name, transform in batched.items():
        print(f"  {name:<12}{_ms_per_call(lambda t=transform: t(images, generator), args.repeats):>8.2f}")
    pixels = (images * 255).round().to(torch.uint8)
    policies = {"randaugment": (augment.RandAugment(), v2.RandAugment()),
                "autoaugment": (augment.AutoAugment(), v2.AutoAugment())}
    print(f"  {'policy':<12}{'grouped':>8}{'per-image':>11}{'one draw/batch':>16}")
    for name, (grouped, torchvision) in policies.items():
        ours = _ms_per_call(lambda g=grouped: g(images, generator), args.repeats)
        each = _ms_per_call(lambda t=torchvision: torch.stack([t(image) for image in pixels]), args.repeats)
        whole = _ms_per_call(lambda t=torchvision: t(pixels), args.repeats)
        print(f"  {name:<12}{ours:>8.2f}{each:>11.2f}{whole:>16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per model and path")
    parser.add_argument("--rounds", type=int, default=3, help="timings per model and path; the best counts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the per-sample path")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--data-dir", default="~/.cache/cnnlab/data")
    parser.add_argument("--augment", action="store_true", help="also time the augmentations")
    parser.add_argument("--repeats", type=int, default=20, help="calls per augmentation timing")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own); 1 on a busy machine, where threads waiting for "
                             "each other behind other processes make small batched ops tens of times slower")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_training(args)
    if args.augment:
        bench_augmentation(args)


if __name__ == "__main__":
    main()
