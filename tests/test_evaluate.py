"""`cnnlab eval`: reproduces a run's test metrics from its folder or checkpoint, honours config overrides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from cnnlab.cli import main
from cnnlab.runs.read import read_metrics


def test_eval_reproduces_the_test_metrics_in_summary(trained_run: Path, capsys: pytest.CaptureFixture):
    code, out, err = run_cli(capsys, "eval", trained_run)
    assert code == 0, err
    summary = json.loads((trained_run / "summary.json").read_text())
    report = json.loads((trained_run / "eval" / "best_test.json").read_text())
    metrics = report["metrics"]
    assert metrics["acc"] == summary["test"]["test/acc"]  # exactly: same weights, batches and metric code
    for name in ("acc_top5", "precision", "recall", "f1", "auroc", "loss"):
        assert metrics[name] == pytest.approx(summary["test"][f"test/{name}"], rel=1e-6), name
    assert report["checkpoint"] == str(trained_run / "checkpoints" / "best.ckpt")
    assert report["config"] == str(trained_run / ".hydra" / "config.yaml")

    test_size = summary["split_sizes"]["test"]
    matrix = report["confusion_matrix"]
    assert report["samples"] == test_size == sum(map(sum, matrix))
    assert sum(matrix[i][i] for i in range(10)) / test_size == pytest.approx(metrics["acc"])
    assert [row["support"] for row in report["per_class"]] == [sum(row) for row in matrix]
    assert (trained_run / "eval" / "best_test_confusion.png").read_bytes().startswith(b"\x89PNG")
    assert "accuracy (top-5)" in out and f"{metrics['acc']:.4f}" in out
    assert "Confusion matrix" in out and "Per class" in out


def test_eval_checkpoint_on_validation_split(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    code, _, err = run_cli(capsys, "eval", checkpoint, "split=val", "batch_size=50", "--out", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "best_val.json").read_text())
    summary = json.loads((trained_run / "summary.json").read_text())
    assert report["split"] == "val" and report["samples"] == summary["split_sizes"]["val"]
    # best.ckpt holds the weights of the best validation epoch; metrics.csv keeps 6 significant digits
    best_val_acc = max(row["val_acc"] for row in read_metrics(trained_run))
    assert report["metrics"]["acc"] == pytest.approx(best_val_acc, abs=1e-6)


@pytest.mark.slow
def test_eval_finds_data_elsewhere_with_data_dir(tmp_path: Path, fashion_dir: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    code = main(["train", "dataset=fashion_mnist", f"data_dir={fashion_dir}", "dataset.source.system_dirs=[]",
                 "dataset.source.download=false", "trainer.max_epochs=1", "progress_bar=none",
                 f"hydra.run.dir={run}"])
    assert code == 0
    test_acc = json.loads((run / "summary.json").read_text())["test"]["test/acc"]
    moved = shutil.move(str(fashion_dir), str(tmp_path / "moved"))

    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "dataset 'fashion_mnist' not found" in err

    code, _, err = run_cli(capsys, "eval", run, f"data_dir={moved}")
    assert code == 0, err
    assert json.loads((run / "eval" / "best_test.json").read_text())["metrics"]["acc"] == test_acc

    # A checkpoint copied away from its run folder carries its own (resolved) config: data_dir still reaches
    # the dataset's source.
    alone = tmp_path / "elsewhere" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(run / "checkpoints" / "best.ckpt", alone)
    code, out, err = run_cli(capsys, "eval", alone, f"data_dir={moved}")
    assert code == 0, err
    report = json.loads((alone.parent / "eval" / "model_test.json").read_text())
    assert report["metrics"]["acc"] == test_acc
    assert report["config"].endswith("(saved config)")


BAD_EVAL = [
    (["model=lenet5"], "cannot be swapped"),
    (["no_such_key=1"], "unknown key 'no_such_key'"),
    (["split=train"], "split='train'"),
    (["batch_size=0"], "batch_size=0"),
    (["batch_size=1,2"], "one value per key"),
    (["--top-k", "3"], "unrecognized arguments"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_EVAL, ids=[" ".join(a) for a, _ in BAD_EVAL])
def test_eval_bad_arguments_are_one_line(trained_run: Path, capsys: pytest.CaptureFixture, args: list[str],
                                         expected: str):
    code, _, err = run_cli(capsys, "eval", trained_run, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: ") and expected in lines[0], err


def test_eval_and_predict_help_lists_every_option(capsys: pytest.CaptureFixture):
    from cnnlab.cli import eval as eval_command
    from cnnlab.cli import predict as predict_command

    for command, module in (("eval", eval_command), ("predict", predict_command)):
        code, out, err = run_cli(capsys, command, "--help")
        assert code == 0 and err == "" and out.startswith(f"usage: cnnlab {command}")
        options = [o for action in module.parser()._actions for o in action.option_strings if o.startswith("--")]
        assert options and all(option in out for option in options)


def test_eval_out_writes_the_report_where_asked(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    code, out, _ = run_cli(capsys, "eval", trained_run, "--out", tmp_path / "elsewhere")
    assert code == 0
    report = json.loads((tmp_path / "elsewhere" / "best_test.json").read_text())
    assert report["split"] == "test" and report["samples"] > 0 and 0 <= report["metrics"]["acc"] <= 1
    assert not (trained_run / "eval" / "best_test.json").exists() or "elsewhere" in out


def test_eval_of_a_multilabel_run_reports_per_label_f1(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Multi-label runs evaluate through the same test step as training's final test (eval used to crash)."""
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "dataset=synthetic", "dataset.multilabel=true", "loss=bce", "model=mlp",
                   "dataset.image_size=8", "dataset.num_classes=4", "dataset.source.num_train=128",
                   "dataset.source.num_test=40", "trainer.max_epochs=1", "progress_bar=none",
                   f"hydra.run.dir={run}")[0] == 0
    tested = json.loads((run / "summary.json").read_text())["test"]
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    report = json.loads((run / "eval" / "best_test.json").read_text())
    assert report["multilabel"] is True and report["confusion_matrix"] is None and report["samples"] == 40
    assert [row["class"] for row in report["per_class"]] == ["0", "1", "2", "3"]
    for name in ("acc", "f1", "map", "loss"):  # the numbers training's own test logged
        assert report["metrics"][name] == pytest.approx(tested[f"test/{name}"], abs=1e-6)
    assert [row["f1"] for row in report["per_class"]] == pytest.approx([tested[f"test/f1_label_{i}"] for i in range(4)])
    assert "Per label" in out
