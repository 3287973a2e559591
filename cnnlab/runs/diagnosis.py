"""Fitting diagnosis from a run's per-epoch history: underfitting, overfitting, or a good fit, and why.

The teaching material's reading of train vs validation curves, made explicit:
  overfitting   validation loss has stayed above its minimum (by more than noise) for the last `overfit_epochs`
                epochs, whatever else still improves (training loss, even validation accuracy);
  underfitting  the best the run reached is low: neither the best validation accuracy nor the final epoch's
                training accuracy reaches `underfit_acc` (an epoch's training accuracy is an average over an
                epoch in which the model was still learning, so it is not judged on its own);
  otherwise     a good fit, which is either still improving at the last epoch (train longer) or has converged.
"""

from __future__ import annotations

import math
from typing import Any

Row = dict[str, Any]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _series(rows: list[Row], column: str) -> list[tuple[int, float]]:
    return [(int(r["epoch"]), float(r[column])) for r in rows if _finite(r.get(column))]


def early_stop_epoch(values: list[tuple[int, float]], mode: str, patience: int, min_delta: float = 0.0) -> int | None:
    """The epoch at which EarlyStopping(patience, min_delta) on this series would have stopped, else None."""
    best, waited = None, 0
    for epoch, value in values:
        improved = best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)
        if improved:
            best, waited = value, 0
        else:
            waited += 1
            if waited >= patience:
                return epoch
    return None


def diagnose(rows: list[Row], monitor: str = "val_acc", mode: str = "max", patience: int = 3,
             min_delta: float = 0.0, underfit_acc: float = 0.7, overfit_epochs: int = 2) -> dict[str, Any]:
    """Summarise a metrics.csv history into figures and a one-line verdict.

    `underfit_acc`: a run whose best validation accuracy and final training accuracy both stay below this is
    underfitting. `overfit_epochs`: how many epochs of validation loss above its minimum count as overfitting.
    """
    if not rows:
        return {"verdict": "unknown", "message": "no completed epoch to diagnose"}
    last = rows[-1]
    train_acc, val_acc = last.get("train_acc"), last.get("val_acc")
    train_loss, val_loss = last.get("train_loss"), last.get("val_loss")
    result: dict[str, Any] = {
        "final_train_acc": train_acc, "final_val_acc": val_acc,
        "final_train_loss": train_loss, "final_val_loss": val_loss,
        "acc_gap": train_acc - val_acc if _finite(train_acc) and _finite(val_acc) else None,
        "loss_gap": val_loss - train_loss if _finite(train_loss) and _finite(val_loss) else None,
    }
    val_losses = _series(rows, "val_loss")
    monitored = _series(rows, monitor)
    if monitored:
        pick = min if mode == "min" else max
        best_epoch, best_value = pick(monitored, key=lambda p: p[1])
        result.update({"best_epoch": best_epoch, f"best_{monitor}": best_value})
    result["val_loss_min_epoch"] = min(val_losses, key=lambda p: p[1])[0] if val_losses else None
    result["val_stopped_improving_epoch"] = result.get("best_epoch")
    result["early_stopping_epoch"] = early_stop_epoch(monitored, mode, patience, min_delta) if monitored else None

    overfit_from = _overfitting_start(rows, overfit_epochs)
    result["overfitting_from_epoch"] = overfit_from
    last_epoch = int(last["epoch"])
    reached = _reached_accuracy(rows)
    result["reached_acc"] = reached[1] if reached else None
    if overfit_from is not None:
        verdict = "overfitting"
        rise = float(last["val_loss"]) - min(v for _, v in val_losses)
        gap = f", accuracy gap {result['acc_gap']:.3f}" if result["acc_gap"] is not None else ""
        message = (f"overfitting from epoch {overfit_from}: validation loss has risen since its minimum at epoch "
                   f"{result['val_loss_min_epoch']} (+{rise:.3f} by epoch {last_epoch}{gap}); "
                   f"the checkpoint of the best epoch is the one to keep")
    elif reached is not None and reached[1] < underfit_acc:
        verdict = "underfitting"
        message = (f"underfitting: the best accuracy reached is only {reached[1]:.3f} ({reached[0]}) after "
                   f"{last_epoch} epochs; use a bigger model, a higher learning rate or more epochs")
    elif not monitored:
        verdict = "unknown"
        message = f"no {monitor} was recorded (validation off?): train vs validation cannot be compared"
    elif result.get("best_epoch") == last_epoch:
        verdict = "still improving"
        message = f"good fit, still improving at the last epoch ({last_epoch}): more epochs may help"
    else:
        verdict = "good fit"
        message = f"good fit: {monitor} peaked at epoch {result.get('best_epoch')} without overfitting"
    stop = result["early_stopping_epoch"]
    if stop is not None:
        message += f"; early stopping (patience {patience}) would have stopped at epoch {stop}"
    result.update({"verdict": verdict, "message": message})
    return result


# A rise of validation loss counts once it exceeds this share of the minimum: the epoch-to-epoch noise of a
# converged run stays below it.
NOISE = 0.05


def _overfitting_start(rows: list[Row], min_epochs: int) -> int | None:
    """The epoch after the validation-loss minimum, when each of the last `min_epochs` epochs (all after the
    minimum) has a validation loss above the minimum by more than noise; else None."""
    usable = [r for r in rows if _finite(r.get("val_loss"))]
    if len(usable) < min_epochs + 1:
        return None
    best_index = min(range(len(usable)), key=lambda i: usable[i]["val_loss"])
    after = usable[best_index + 1:]
    if len(after) < min_epochs:
        return None
    lowest = float(usable[best_index]["val_loss"])
    margin = NOISE * abs(lowest)
    if all(float(r["val_loss"]) > lowest + margin for r in after[-min_epochs:]):
        return int(after[0]["epoch"])
    return None


def _reached_accuracy(rows: list[Row]) -> tuple[str, float] | None:
    """The best accuracy the run reached: its best validation accuracy, or its final epoch's training accuracy
    when that is higher (the number and where it comes from)."""
    candidates = []
    val = _series(rows, "val_acc")
    if val:
        epoch, value = max(val, key=lambda p: p[1])
        candidates.append((f"validation, epoch {epoch}", value))
    if _finite(rows[-1].get("train_acc")):
        candidates.append((f"training, epoch {int(rows[-1]['epoch'])}", float(rows[-1]["train_acc"])))
    return max(candidates, key=lambda c: c[1]) if candidates else None
