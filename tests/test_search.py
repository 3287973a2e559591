"""Optuna search (hparams_search=optuna): trials stored in SQLite, a resumed study, a study in PostgreSQL."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cnnlab
from hydra import compose, initialize_config_dir

from cnnlab.cli import main
from cnnlab.config import CONF_DIR
from cnnlab.resolvers import register_resolvers

optuna = pytest.importorskip("optuna", reason="the search extra is not installed: pip install -e '.[search]'")

# Tiny trials: a couple of steps of the MLP on generated data; noisy enough that accuracies differ between trials.
TRIAL = ["hparams_search=optuna", "dataset=synthetic", "dataset.source.noise=1.2", "model=mlp", "progress_bar=none",
         "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false"]


def search(sweep_dir: Path, trials: int, *extra: str) -> int:
    return main(["train", *TRIAL, f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={sweep_dir}", *extra])


def trial_values(sweep_dir: Path) -> list[float]:
    """val_acc of each trial folder's best epoch, oldest first."""
    summaries = sorted(sweep_dir.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(p.read_text())["best"]["val_acc"] for p in summaries]


@pytest.mark.slow
def test_search_stores_trials_in_sqlite_and_resumes(tmp_path: Path):
    sweep = tmp_path / "search"
    assert search(sweep, 3) == 0
    storage = f"sqlite:///{sweep}/optuna.db"
    study = optuna.load_study(study_name="synthetic_mlp", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # monitor val/acc: higher is better
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # Each trial's value is what its run returned: the best val_acc in its run folder (6 digits in metrics.csv).
    assert [t.value for t in trials] == pytest.approx(trial_values(sweep), abs=1e-6)
    assert {"optimizer.lr", "optimizer.weight_decay", "batch_size", "loss"} == set(trials[0].params)
    assert all(1e-4 <= t.params["optimizer.lr"] <= 1e-1 and t.params["loss"] in ("ce", "nll") for t in trials)

    # The same command again adds trials to the same study, in new run folders beside the first ones.
    assert search(sweep, 2) == 0
    trials = optuna.load_study(study_name="synthetic_mlp", storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len(list(sweep.glob("*/summary.json"))) == 5
    assert [t.value for t in trials] == pytest.approx(trial_values(sweep), abs=1e-6)


@pytest.mark.parametrize(("monitor", "direction"), [("val/acc", "maximize"), ("val/loss", "minimize")])
def test_direction_follows_the_monitored_metric(monitor: str, direction: str):
    register_resolvers()  # as importing cnnlab does for every entry point
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", f"monitor={monitor}", "dataset=digits"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == direction
    assert sweeper.study_name == "digits_lenet"
    assert sweeper.storage == "sqlite:///outputs/search/digits_lenet/optuna.db"  # in the sweep folder
    assert cfg.hydra.mode.name == "MULTIRUN"


@pytest.mark.slow
def test_unreachable_storage_is_one_line(tmp_path: Path):
    port = free_port()
    result = cnnlab("train", *TRIAL, f"storage=postgresql://someone:secret@127.0.0.1:{port}/nowhere",
                    f"hydra.sweep.dir={tmp_path / 'search'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: storage=postgresql://someone:***@127.0.0.1")
    assert "secret" not in result.stderr and "cannot open the Optuna study storage" in lines[0]
    assert not list((tmp_path / "search").glob("*/summary.json"))


# ------------------------------------------------------------------ a real PostgreSQL server on loopback
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (/usr/lib/postgresql/VERSION/bin), or one on PATH."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth, no fsync), stopped and removed afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install -e '.[search]'")
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server programs (Debian: apt-get install postgresql; .ci/run installs it)")
    user: dict = {}
    if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's `postgres` account
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` account to run the PostgreSQL server as")
        user = {"user": account.pw_uid, "group": account.pw_gid}
    home = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))  # not under pytest's 0700 tmp folders: postgres reads it
    if user:
        os.chown(home, user["user"], user["group"])
    port = free_port()

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=home, capture_output=True, text=True,
                              timeout=60, **user)

    try:
        made = pg("initdb", "-D", str(home / "data"), "-U", "cnnlab", "-A", "trust", "-E", "UTF8", "--no-sync")
        started = made.returncode == 0 and pg(
            "pg_ctl", "-D", str(home / "data"), "-l", str(home / "server.log"), "-w", "-t", "30",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -F", "start").returncode == 0
        if not started:
            log = (home / "server.log").read_text()[-500:] if (home / "server.log").exists() else made.stderr[-500:]
            pytest.skip(f"could not start a PostgreSQL server from {bin_dir}: {log}")
        created = pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "cnnlab", "optuna")
        assert created.returncode == 0, created.stderr
        yield f"postgresql://cnnlab@127.0.0.1:{port}/optuna"
    finally:
        pg("pg_ctl", "-D", str(home / "data"), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_search_shares_a_study_in_postgresql(tmp_path: Path, postgres_url: str):
    # Two searches from different folders (as two machines would) add to one study on the server.
    assert search(tmp_path / "machine_a", 2, f"storage={postgres_url}", "hydra.sweeper.study_name=shared") == 0
    assert search(tmp_path / "machine_b", 1, f"storage={postgres_url}", "hydra.sweeper.study_name=shared") == 0
    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.value for t in trials] == pytest.approx(
        trial_values(tmp_path / "machine_a") + trial_values(tmp_path / "machine_b"), abs=1e-6)
    assert not (tmp_path / "machine_a" / "optuna.db").exists()
