"""Fitting diagnosis from a run's per-epoch history: underfitting, overfitting, or a good fit, and why.

The teaching material's reading of train vs validation curves, made explicit:
  underfitting  the model does not even fit the training data (training accuracy itself is low);
  overfitting   validation loss rises again after its minimum while training loss keeps falling and the
                train-validation accuracy gap grows;
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

    `underfit_acc`: final training accuracy below this is underfitting. `overfit_epochs`: how many epochs of
    rising validation loss (after its minimum, with falling training loss) count as overfitting.
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
    if _finite(train_acc) and train_acc < underfit_acc:
        verdict = "underfitting"
        message = (f"underfitting: training accuracy is only {train_acc:.3f} after {last_epoch} epochs; "
                   "use a bigger model, a higher learning rate or more epochs")
    elif overfit_from is not None:
        verdict = "overfitting"
        message = (f"overfitting from epoch {overfit_from}: validation loss rises while training loss falls "
                   f"(accuracy gap {result['acc_gap']:.3f})")
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


def _overfitting_start(rows: list[Row], min_epochs: int) -> int | None:
    """First epoch after the validation-loss minimum from which val loss rose for `min_epochs` epochs in a row
    while training loss kept falling and the train-validation accuracy gap widened."""
    usable = [r for r in rows if _finite(r.get("val_loss")) and _finite(r.get("train_loss"))]
    if len(usable) < min_epochs + 1:
        return None
    best_index = min(range(len(usable)), key=lambda i: usable[i]["val_loss"])
    after = usable[best_index:]
    if len(after) < min_epochs + 1:
        return None
    rising = all(after[i + 1]["val_loss"] > after[i]["val_loss"] for i in range(min_epochs))
    train_falls = after[-1]["train_loss"] < after[0]["train_loss"]

    def gap(row: Row) -> float | None:
        return row["train_acc"] - row["val_acc"] if _finite(row.get("train_acc")) and _finite(row.get("val_acc")) \
            else None

    gaps = [gap(after[0]), gap(after[-1])]
    gap_grows = None in gaps or gaps[1] > gaps[0]
    if rising and train_falls and gap_grows:
        return int(after[1]["epoch"])
    return None
