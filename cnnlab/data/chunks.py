"""Several training batches per Lightning step (`steps_per_execution`): the loader side.

`ChunkedLoader` wraps a training loader and hands Lightning one `Chunk` per call: a lazy run of up to K of the
wrapped loader's batches, in the wrapped loader's order. The module (cnnlab/train/module.py) takes the chunk's
batches one at a time, each through Lightning's own per-batch path (input conversion, device transfer,
normalisation and augmentation) and one optimizer step, so batches, augmentation draws and steps are those of
K=1. Because a chunk draws its batches only as they are taken, the wrapped loader's position is always the number
of batches trained on: a run stopped at `max_steps` mid-chunk, then continued, takes up exactly where it was.

The chunks of an epoch cover its first `limit` batches (`trainer.limit_train_batches`, applied here in batches
rather than by Lightning in chunks): ceil(limit / K) chunks, every one of K batches but the last.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any


class Chunk:
    """Up to `size` batches drawn one at a time from `source` as the chunk is iterated; `first` is the epoch index
    (from 0) of its first batch, `epoch_batches` the batches of its epoch, `taken` how many it has handed out."""

    def __init__(self, source: Iterator[Any], first: int, size: int, epoch_batches: int):
        self.source, self.first, self.size, self.epoch_batches = source, first, size, epoch_batches
        self.taken = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Any]:
        while self.taken < self.size:
            try:
                batch = next(self.source)
            except StopIteration:
                return
            self.taken += 1
            yield batch

    def __repr__(self) -> str:
        return f"Chunk(first={self.first}, size={self.size}, taken={self.taken})"


def limited_batches(batches: int, limit: int | float | None) -> int:
    """The batches of an epoch that `trainer.limit_train_batches` keeps, as Lightning counts them: an int caps the
    count, a float keeps that fraction (rounded down, but at least one when it is above 0)."""
    if limit is None:
        return batches
    if isinstance(limit, float):
        kept = int(batches * limit)
        return max(kept, 1) if limit > 0 and batches else kept
    return min(batches, int(limit))


class ChunkedLoader:
    """A training loader's batches in chunks of `steps` (see the module docstring); resumable when the wrapped
    loader is (InMemoryLoader): its state is the wrapped loader's, which counts batches, not chunks."""

    def __init__(self, loader: Any, steps: int, limit: int | float | None = None):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.loader, self.steps, self.limit = loader, steps, limit

    @property
    def batches_per_epoch(self) -> int:
        """Batches (optimizer steps) of one epoch after `limit`."""
        return limited_batches(len(self.loader), self.limit)

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch / self.steps)

    def __iter__(self) -> Iterator[Chunk]:
        """Chunk j of an epoch ends at batch (j + 1) * steps (or the epoch's end), so an epoch has len(self) chunks
        however it was cut. A resumed epoch begins where its checkpoint left it (`start`, in batches), and Lightning
        counts the calls before it as ceil(start / steps), the last perhaps cut short by max_steps: the first chunk
        after a resume takes the rest of that one too."""
        total = self.batches_per_epoch
        start = getattr(self.loader, "start", 0)
        source = iter(self.loader)
        first = start
        calls = range(math.ceil(start / self.steps), math.ceil(total / self.steps))
        if not calls and start < total:
            # Resumed inside the epoch's last call, which Lightning counts as done (a run cut there by max_steps):
            # no call is left for the epoch's rest, which is skipped so that the next epoch starts afresh.
            for _ in source:
                pass
            return
        for call in calls:
            end = min((call + 1) * self.steps, total)
            chunk = Chunk(source, first, end - first, total)
            yield chunk
            if chunk.taken < chunk.size:  # cut short (max_steps), or a streamed dataset shorter than its length
                return
            first = end

    def state_dict(self) -> dict[str, Any]:
        """The wrapped loader's position ({} for one without a state: a streamed image tree)."""
        return self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or not hasattr(self.loader, "load_state_dict"):
            return
        if state.get("batches_done", 0) >= self.batches_per_epoch:  # saved at the end of a (limited) epoch
            state = {**state, "epoch": state["epoch"] + 1, "batches_done": 0}
        self.loader.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:  # the wrapped loader's other attributes (batch_size, ...)
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)
