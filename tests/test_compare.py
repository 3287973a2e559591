"""`cnnlab compare` and the sweep summary: table columns, seed statistics, exports, overlay PNG, failed runs."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml

from cnnlab.cli import main

SWEEP = ["train", "-m", "loss=ce,nll", "seed=0,1", "dataset=synthetic", "trainer.max_epochs=2", "batch_size=32",
         "+trainer.limit_train_batches=4", "progress_bar=none"]


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def summaries(sweep: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep.glob("*/summary.json"))]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 losses x 2 seeds multirun on synthetic data (4 short runs)."""
    folder = tmp_path_factory.mktemp("sweep") / "multirun"
    assert main([*SWEEP, f"hydra.sweep.dir={folder}"]) == 0
    return folder


# ------------------------------------------------------------------ the sweep summary of a real multirun
@pytest.mark.slow
def test_multirun_writes_a_sweep_summary_with_seed_statistics(sweep: Path, capsys: pytest.CaptureFixture):
    for name in ("sweep_summary.md", "sweep_summary.csv", "sweep_curves.png"):
        assert (sweep / name).is_file(), name
    assert (sweep / "sweep_curves.png").read_bytes().startswith(b"\x89PNG")
    rows = read_csv((sweep / "sweep_summary.csv").read_text())
    assert [r["loss"] for r in rows] != [] and sorted(r["loss"] for r in rows) == ["ce", "nll"]
    assert list(rows[0])[:3] == ["loss", "seeds", "runs"]  # only the loss differs once seeds are grouped
    runs = summaries(sweep)
    assert len(runs) == 4
    for row in rows:
        mine = [s for s in runs if s["choices"]["loss"] == row["loss"]]
        assert row["seeds"] == "2" and sorted(s["seed"] for s in mine) == [0, 1]
        for column, values in (("best_val_acc", [s["best"]["val_acc"] for s in mine]),
                               ("test_acc", [s["test"]["test/acc"] for s in mine]),
                               ("duration_s", [s["duration_s"] for s in mine])):
            assert float(row[column]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{column}_std"]) == pytest.approx(statistics.stdev(values))
        assert int(row["params"]) == mine[0]["params"] == 431_080
        assert row["failed"] == "0"
    best = [float(r["best_val_acc"]) for r in rows]
    assert best == sorted(best, reverse=True)  # monitored val/acc: highest first
    markdown = (sweep / "sweep_summary.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| loss | seeds | runs | best val/acc | epoch | test acc |")
    assert len(table) == 1 + 1 + 2  # header, rule, one line per loss
    assert " ± " in table[2] and "![validation curves](sweep_curves.png)" in markdown
    assert "Same in all runs: `model=lenet optimizer=adam" in markdown


@pytest.mark.slow
def test_hparams_and_confusion_matrix_reach_tensorboard(sweep: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = sweep / "0"
    summary = json.loads((run / "summary.json").read_text())
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["loss"].string_value == summary["choices"]["loss"]
    assert hparams["seed"].number_value == summary["seed"]
    assert hparams["trainer.limit_train_batches"].number_value == 4  # overridden keys are hparams too
    assert "progress_bar" not in hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    assert {"hparams/test/acc", "hparams/best_val_acc"} <= metric_tags
    assert events.Scalars("hparams/test/acc")[0].value == pytest.approx(summary["test"]["test/acc"])
    assert events.Scalars("hparams/best_val_acc")[0].value == pytest.approx(summary["best"]["val_acc"])


# ------------------------------------------------------------------ `cnnlab compare`
def test_compare_prints_the_table_and_writes_exports_and_png(sweep: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture):
    md, table_csv, png = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "curves.png"
    assert main(["compare", str(sweep), "--output", str(md), "--output", str(table_csv), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "sorted by best val/acc" in out and "± " in out
    assert "loss" in out and " ce " in out and " nll " in out
    assert f"curves: {png}" in out
    assert png.read_bytes().startswith(b"\x89PNG")
    assert md.read_text() in (sweep / "sweep_summary.md").read_text()  # the same table as the sweep summary
    assert table_csv.read_text() == (sweep / "sweep_summary.csv").read_text()


def test_compare_per_run_matches_each_summary(sweep: Path, capsys: pytest.CaptureFixture):
    assert main(["compare", str(sweep), "--per-run", "--format", "csv", "--no-plot"]) == 0
    rows = read_csv(capsys.readouterr().out)
    assert len(rows) == 4
    assert list(rows[0])[:3] == ["loss", "seed", "runs"] and "best_val_acc_std" not in rows[0]
    for row in rows:
        summary = json.loads((sweep / row["runs"] / "summary.json").read_text())
        assert (row["loss"], int(row["seed"])) == (summary["choices"]["loss"], summary["seed"])
        assert float(row["best_val_acc"]) == pytest.approx(summary["best"]["val_acc"])
        assert int(row["best_epoch"]) == summary["best"]["epoch"]
        assert float(row["test_acc"]) == pytest.approx(summary["test"]["test/acc"])
        assert float(row["test_f1"]) == pytest.approx(summary["test"]["test/f1"])
        assert float(row["duration_s"]) == pytest.approx(summary["duration_s"])
    assert not (sweep / "comparison.png").exists()


# ------------------------------------------------------------------ hand-made run folders (no training)
def fake_run(folder: Path, choices: dict[str, str], overrides: list[str], config: dict, val_acc: list[float],
             status: str | None = "completed", error: str | None = None, test_acc: float = 0.5) -> Path:
    """A run folder as `cnnlab train` leaves it: .hydra files, metrics.csv and (unless status is None) summary."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    runtime_choices = {**choices, "hydra/launcher": "basic"}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": runtime_choices}}}))
    lines = ["epoch,step,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s"]
    lines += [f"{i + 1},{10 * (i + 1)},1.0,0.5,{1 - acc},{acc},0.001,1.0" for i, acc in enumerate(val_acc)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    if status is not None:
        summary = {"status": status, "error": error, "choices": choices, "monitor": "val/acc", "mode": "max",
                   "params": 1000, "duration_s": 3.0}
        if status == "completed":
            summary.update(test={"test/acc": test_acc, "test/loss": 1.0})
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


CHOICES = {"model": "lenet", "loss": "ce", "optimizer": "adam", "dataset": "digits"}
CONFIG = {"seed": 42, "seeds": {"init": "${seed}"}, "optimizer": {"lr": 0.001}, "progress_bar": "rich"}


def test_only_differing_choices_become_columns_and_failures_are_listed(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture):
    fake_run(tmp_path / "a", CHOICES, ["progress_bar=none"], CONFIG, [0.6, 0.7], test_acc=0.71)
    fake_run(tmp_path / "b", CHOICES, ["optimizer.lr=0.01"], {**CONFIG, "optimizer": {"lr": 0.01}}, [0.8, 0.75],
             test_acc=0.79)
    fake_run(tmp_path / "c", {**CHOICES, "loss": "nll"}, [], CONFIG, [0.3], status="failed",
             error="ValueError: the loss is nan at step 7")
    fake_run(tmp_path / "d", {**CHOICES, "loss": "nll"}, [], CONFIG, [], status=None)
    assert main(["compare", str(tmp_path), "--format", "md", "--no-plot"]) == 0
    markdown = capsys.readouterr().out
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| loss | optimizer.lr | run | best val/acc | epoch | test acc | test loss |")
    assert table[0].endswith("| params | duration (s) | diagnosis | status |")  # progress_bar is no choice
    assert table[2].startswith("| ce | 0.01 | b | 0.8000 | 1 | 0.7900 |")  # best first, at its best epoch
    assert table[3].startswith("| ce | 0.001 | a | 0.7000 | 2 | 0.7100 |")  # lr not overridden: config value
    assert table[4].endswith("| failed |") and table[5].endswith("| incomplete |")
    assert "- c (loss=nll optimizer.lr=0.001): failed: ValueError: the loss is nan at step 7" in markdown
    assert "- d (loss=nll optimizer.lr=0.001): incomplete: no summary.json" in markdown
    assert "Same in all runs: `model=lenet optimizer=adam dataset=digits`" in markdown


def test_sweep_summary_names_jobs_that_hydra_saw_fail(tmp_path: Path):
    from cnnlab.runs.sweeps import write_sweep_summary

    fake_run(tmp_path / "0", CHOICES, ["seed=0"], {**CONFIG, "seed": 0}, [0.5], test_acc=0.4)
    fake_run(tmp_path / "1", CHOICES, ["seed=1"], {**CONFIG, "seed": 1}, [0.7], test_acc=0.6)
    fake_run(tmp_path / "2", {**CHOICES, "loss": "nll"}, ["seed=0"], {**CONFIG, "seed": 0}, [], status=None)
    errors = {(tmp_path / "2").resolve(): "RuntimeError: CUDA out of memory"}
    comparison = write_sweep_summary(tmp_path, errors)
    assert comparison is not None and comparison.grouped
    rows = read_csv((tmp_path / "sweep_summary.csv").read_text())
    assert [(r["loss"], r["seeds"], r["failed"]) for r in rows] == [("ce", "2", "0"), ("nll", "0", "1")]
    assert float(rows[0]["test_acc"]) == pytest.approx(0.5) and float(rows[0]["test_acc_std"]) == pytest.approx(
        statistics.stdev([0.4, 0.6]))
    assert rows[1]["errors"] == "failed: RuntimeError: CUDA out of memory"
    assert rows[1]["best_val_acc"] == ""
    markdown = (tmp_path / "sweep_summary.md").read_text()
    assert "- 2 (loss=nll seed=0): failed: RuntimeError: CUDA out of memory" in markdown
    assert (tmp_path / "sweep_curves.png").stat().st_size > 0


@pytest.mark.parametrize(("args", "expected"), [
    (["/no/such/folder"], "/no/such/folder: no such folder"),
    (["{empty}"], "no run folders here"),
    (["{empty}", "--format", "xml"], "compare: argument --format: invalid choice: 'xml'"),
    (["{empty}", "--output", "table.txt"], "--output table.txt: name it .md or .csv"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                          expected: str):
    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnnlab: error: ") and expected in err[0]


@pytest.mark.slow
def test_sweep_summary_is_written_when_a_job_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import cnnlab.cli.train

    original = cnnlab.cli.train.run

    def run(cfg):  # the second job breaks the way a bug or a crash in training would
        if cfg.seed == 1:
            raise RuntimeError("simulated crash in job 1")
        return original(cfg)

    monkeypatch.setattr(cnnlab.cli.train, "run", run)
    folder = tmp_path / "multirun"
    try:
        main(["train", "-m", "seed=0,1", "dataset=synthetic", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
              "test=false", "progress_bar=none", f"hydra.sweep.dir={folder}"])
    except RuntimeError:
        pass  # Hydra's basic sweeper re-raises a failed job's error once every job has run
    rows = read_csv((folder / "sweep_summary.csv").read_text())
    assert [(r["seeds"], r["failed"]) for r in rows] == [("1", "1")]
    assert "failed: RuntimeError: simulated crash in job 1" in rows[0]["errors"]
    markdown = (folder / "sweep_summary.md").read_text()
    assert "Failed runs (1):" in markdown and "- 1 (seed=1): failed: RuntimeError: simulated crash in job 1" in markdown


@pytest.mark.slow
def test_diagnosis_column_shows_verdicts_and_debug_runs(tmp_path: Path):
    from cnnlab.cli import main
    from cnnlab.runs.compare import compare, load, to_csv

    for name, extra in (("plain", []), ("fdr", ["debug=fdr"])):
        assert main(["train", "dataset=synthetic", "model=mlp", "trainer.max_epochs=1", "progress_bar=none", *extra,
                     f"hydra.run.dir={tmp_path / name}"]) == 0
    rows = to_csv(compare(load([tmp_path / "plain", tmp_path / "fdr"]), per_run=True)).splitlines()
    header = rows[0].split(",")
    verdicts = {row.split(",")[header.index("runs")]: row.split(",")[header.index("diagnosis")] for row in rows[1:]}
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert verdicts["plain"] == summary["diagnosis"]["verdict"]
    assert verdicts["fdr"].endswith("[debug=fdr]")


# ------------------------------------------------------------------ evidence: differences from a baseline row
def test_grouped_rows_carry_their_difference_ci_p_value_and_words(tmp_path: Path, capsys: pytest.CaptureFixture):
    from scipy import stats

    better, base = [0.80, 0.82, 0.79], [0.75, 0.78, 0.76]
    for seed in range(3):
        config = {**CONFIG, "seed": seed}
        fake_run(tmp_path / f"ce{seed}", CHOICES, [f"seed={seed}"], config, [better[seed]], test_acc=better[seed])
        fake_run(tmp_path / f"nll{seed}", {**CHOICES, "loss": "nll"}, [f"seed={seed}"], config, [base[seed]],
                 test_acc=base[seed])
        fake_run(tmp_path / f"kl{seed}", {**CHOICES, "loss": "kl"}, [f"seed={seed}"], config, [base[seed]],
                 test_acc=base[seed])
    assert main(["compare", str(tmp_path), "--format", "csv", "--no-plot", "--baseline", "loss=nll"]) == 0
    rows = {r["loss"]: r for r in read_csv(capsys.readouterr().out)}
    reference = stats.ttest_rel(better, base)
    ce = rows["ce"]
    assert float(ce["delta_best_val_acc"]) == pytest.approx(0.04)
    assert float(ce["delta_best_val_acc_ci_low"]) == pytest.approx(reference.confidence_interval().low)
    assert float(ce["delta_best_val_acc_ci_high"]) == pytest.approx(reference.confidence_interval().high)
    assert float(ce["delta_best_val_acc_p"]) == pytest.approx(reference.pvalue)
    assert ce["delta_best_val_acc_test"] == "paired t" and ce["evidence"] == "better"
    assert float(ce["delta_test_acc"]) == pytest.approx(0.04) and ce["delta_test_acc_test"] == "paired t"
    assert rows["nll"]["evidence"] == "baseline" and rows["nll"]["delta_best_val_acc"] == ""
    assert rows["kl"]["evidence"] == "no difference: identical with 3 seeds"
    assert float(rows["kl"]["delta_best_val_acc_p"]) == 1.0
    # the default baseline is the best row; the Markdown export carries the same columns
    assert main(["compare", str(tmp_path), "--format", "md", "--no-plot"]) == 0
    markdown = capsys.readouterr().out
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert "| Δ best val/acc [95% CI] | p best val/acc | Δ test acc [95% CI] | p test acc | evidence |" in table[0]
    assert table[2].startswith("| ce | 3 |") and "| baseline | — | baseline | — | baseline |" in table[2]
    assert "| -0.0400 [-0.0648, -0.0152] | 0.0202 (paired t) |" in table[3] and table[3].count("| worse |") == 1
    assert "Δ: difference from the baseline row (loss=ce)" in markdown


def test_unpaired_groups_get_welch_and_say_so(tmp_path: Path, capsys: pytest.CaptureFixture):
    for seed, acc in ((0, 0.70), (1, 0.72), (2, 0.75), (3, 0.71)):
        fake_run(tmp_path / f"ce{seed}", CHOICES, [f"seed={seed}"], {**CONFIG, "seed": seed}, [acc])
    for seed, acc in ((7, 0.60), (8, 0.66), (9, 0.62)):
        fake_run(tmp_path / f"nll{seed}", {**CHOICES, "loss": "nll"}, [f"seed={seed}"], {**CONFIG, "seed": seed},
                 [acc])
    assert main(["compare", str(tmp_path), "--format", "csv", "--no-plot"]) == 0
    rows = {r["loss"]: r for r in read_csv(capsys.readouterr().out)}
    assert rows["nll"]["delta_best_val_acc_test"] == "Welch (unpaired)"
    assert rows["nll"]["evidence"] == "worse (unpaired)"
    assert float(rows["nll"]["delta_best_val_acc_p"]) == pytest.approx(0.0149218, abs=1e-6)


@pytest.mark.parametrize(("args", "expected"), [
    (["--baseline", "loss=focal"], "--baseline loss=focal: matches no row; allowed: one of loss=ce; loss=nll"),
    (["--baseline", "ce"], "--baseline ce: give KEY=VALUE pairs"),
    (["--per-run", "--baseline", "loss=ce"], "--baseline loss=ce: needs rows of repeated runs"),
])
def test_bad_baseline_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                             expected: str):
    for seed in range(2):
        for loss in ("ce", "nll"):
            fake_run(tmp_path / f"{loss}{seed}", {**CHOICES, "loss": loss}, [f"seed={seed}"],
                     {**CONFIG, "seed": seed}, [0.5 + seed / 10])
    assert main(["compare", str(tmp_path), "--no-plot", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnnlab: error: ") and expected in err[0]


TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=300",
        "dataset.source.num_test=60", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=2", "progress_bar=none"]


@pytest.mark.slow
def test_real_sweeps_better_is_marked_better_and_ce_equals_nll(tmp_path: Path, capsys: pytest.CaptureFixture):
    """ce and nll are the same function (fair runs: identical numbers); lr=1e-6 barely moves from chance."""
    assert main(["train", "-m", "loss=ce,nll", "seed=0,1,2", "optimizer.lr=0.03", *TINY,
                 f"hydra.sweep.dir={tmp_path / 'losses'}"]) == 0
    assert main(["train", "-m", "seed=0,1,2", "optimizer.lr=0.000001", *TINY,
                 f"hydra.sweep.dir={tmp_path / 'still'}"]) == 0
    capsys.readouterr()
    summary = {r["loss"]: r for r in read_csv((tmp_path / "losses" / "sweep_summary.csv").read_text())}
    assert {r["evidence"] for r in summary.values()} == {"baseline", "no difference: identical with 3 seeds"}
    folders = [str(tmp_path / "losses"), str(tmp_path / "still")]
    assert main(["compare", *folders, "--format", "csv", "--no-plot", "--baseline", "optimizer.lr=1e-06"]) == 0
    rows = read_csv(capsys.readouterr().out)
    by = {(r["loss"], r["optimizer.lr"]): r for r in rows}
    for loss in ("ce", "nll"):
        row = by[(loss, "0.03")]
        assert row["evidence"] == "better" and row["delta_best_val_acc_test"] == "paired t"
        assert float(row["delta_best_val_acc_ci_low"]) > 0 and float(row["delta_best_val_acc_p"]) < 0.05
    assert by[("ce", "1e-06")]["evidence"] == "baseline"
    assert main(["compare", *folders, "--format", "csv", "--no-plot", "--baseline", "loss=nll optimizer.lr=0.03"]) == 0
    by = {(r["loss"], r["optimizer.lr"]): r for r in read_csv(capsys.readouterr().out)}
    assert by[("ce", "0.03")]["evidence"] == "no difference: identical with 3 seeds"
    assert float(by[("ce", "0.03")]["delta_test_acc"]) == 0.0
    assert by[("ce", "1e-06")]["evidence"] == "worse"


def test_sweep_summary_cache_rereads_only_changed_runs_and_plots_when_asked(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    import cnnlab.runs.sweeps as sweeps

    reads: list[str] = []
    original = sweeps.read_run
    monkeypatch.setattr(sweeps, "read_run", lambda folder: reads.append(Path(folder).name) or original(folder))
    fake_run(tmp_path / "0", CHOICES, ["seed=0"], {**CONFIG, "seed": 0}, [0.5])
    fake_run(tmp_path / "1", CHOICES, ["seed=1"], {**CONFIG, "seed": 1}, [], status=None)
    cache = sweeps.RunCache()
    sweeps.write_sweep_summary(tmp_path, cache=cache, plot=False)  # no PNG yet: drawn anyway
    png = (tmp_path / "sweep_curves.png").stat().st_mtime_ns
    assert sorted(reads) == ["0", "1"]
    fake_run(tmp_path / "2", CHOICES, ["seed=2"], {**CONFIG, "seed": 2}, [0.7])
    cache.add(tmp_path / "2")
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    (tmp_path / "1" / "summary.json").write_text(json.dumps({**summary, "status": "completed"}))
    comparison = sweeps.write_sweep_summary(tmp_path, cache=cache, plot=False)
    assert sorted(reads) == ["0", "1", "1", "2"]  # run 0 unchanged: not read again
    assert (tmp_path / "sweep_curves.png").stat().st_mtime_ns == png
    assert comparison is not None and len(comparison.runs) == 3
    rows = read_csv((tmp_path / "sweep_summary.csv").read_text())
    assert rows[0]["seeds"] == "3" and rows[0]["runs"] == "0 1 2"
    sweeps.write_sweep_summary(tmp_path, cache=cache, plot=True)
    assert (tmp_path / "sweep_curves.png").stat().st_mtime_ns != png


def test_plot_params_draws_numeric_keys_only(tmp_path: Path, capsys: pytest.CaptureFixture):
    from cnnlab.runs.compare import compare, load
    from cnnlab.runs.params_plot import numeric_keys

    for seed in range(2):
        for lr in (0.001, 0.1):
            fake_run(tmp_path / "runs" / f"{lr}-{seed}", CHOICES, [f"optimizer.lr={lr}", f"seed={seed}"],
                     {**CONFIG, "seed": seed, "optimizer": {"lr": lr}}, [0.5 + lr + seed / 100])
    fake_run(tmp_path / "runs" / "nll", {**CHOICES, "loss": "nll"}, ["seed=0"], {**CONFIG, "seed": 0}, [0.4])
    comparison = compare(load([tmp_path / "runs"]))
    assert comparison.varied == ["loss", "optimizer.lr", "seed"] and numeric_keys(comparison) == ["optimizer.lr"]
    out = tmp_path / "params.png"
    assert main(["compare", str(tmp_path / "runs"), "--no-plot", "--plot-params", str(out)]) == 0
    assert f"wrote parameters: {out}" in capsys.readouterr().out
    assert out.read_bytes().startswith(b"\x89PNG")
    from cnnlab.runs.sweeps import write_sweep_summary

    write_sweep_summary(tmp_path / "runs")  # the sweep summary draws it beside sweep_curves.png
    assert (tmp_path / "runs" / "sweep_params.png").read_bytes().startswith(b"\x89PNG")
    only_loss = tmp_path / "losses"
    for loss in ("ce", "nll"):
        fake_run(only_loss / loss, {**CHOICES, "loss": loss}, [], CONFIG, [0.5])
    assert main(["compare", str(only_loss), "--no-plot", "--plot-params", str(tmp_path / "none.png")]) == 0
    assert "no parameters plot: the runs vary no numeric key" in capsys.readouterr().out
    assert not (tmp_path / "none.png").exists()
