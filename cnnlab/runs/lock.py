"""One run, one folder, one writer: claiming a run folder before anything is written into it.

- A new run refuses a folder that already holds a run (`cnnlab train resume=RUN` continues one instead).
- An exclusive lock file (layout.LOCK_FILE: pid and host, created atomically with O_EXCL) stops a second process
  from writing a run folder while the first does; it goes when the writer ends (any exit; a lock left by a killed
  process on this host is recognised by its dead pid and taken over). A lock from another host is only reported.
- `RunFolderClaim` is the Hydra callback that does both before Hydra writes `.hydra/` (single runs) or as each job
  of a multirun starts. DDP ranks other than 0 (LOCAL_RANK/RANK set) share rank 0's folder and claim nothing.
No torch here.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from cnnlab.errors import ConfigError, report
from cnnlab.runs.layout import HYDRA_DIR, LOCK_FILE, holds_run, shown

_HELD: dict[Path, int] = {}  # lock files this process holds (released at exit whatever happens)
_CREATED: set[Path] = set()  # run folders this process created (a run refused by a check leaves none behind)


def _owner(lock: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def acquire(run_dir: Path) -> Path:
    """Create run_dir's lock file for this process (taking over a stale one); ConfigError if another writer has it."""
    run_dir = Path(run_dir)
    lock = Path(os.path.abspath(run_dir / LOCK_FILE))
    if _HELD.get(lock) == os.getpid():
        return lock
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            if owner is None:  # being written this instant, or empty: look again
                owner = {}
            stale = owner.get("host") == me["host"] and not _alive(owner.get("pid"))
            if stale or (owner.get("host") == me["host"] and owner.get("pid") == me["pid"]):
                lock.unlink(missing_ok=True)
                continue
            raise ConfigError("hydra.run.dir", str(run_dir), message=(
                f"{shown(run_dir)} is being written by another cnnlab process (pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}, see {shown(lock)}): one run folder has one writer; wait for it, or "
                f"delete {shown(lock)} if that process is gone")) from None
        except OSError as error:  # read-only, no permission, a name too long, a full disk: the user's path
            raise _unwritable(run_dir, error) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(me) + "\n")
        _HELD[lock] = os.getpid()
        return lock
    raise ConfigError("hydra.run.dir", str(run_dir), message=f"cannot lock {shown(lock)}: it keeps coming back")


def _unwritable(run_dir: Path, error: OSError) -> ConfigError:
    code = errno.errorcode.get(error.errno or 0, "")
    return ConfigError("hydra.run.dir", str(run_dir), message=(
        f"cannot write the run folder {shown(run_dir)}: {error.strerror or error}" + (f" ({code})" if code else "")
        + "; choose another hydra.run.dir"))


def release(run_dir: Path) -> None:
    """Remove run_dir's lock file if this process holds it."""
    lock = Path(os.path.abspath(Path(run_dir) / LOCK_FILE))
    if _HELD.pop(lock, None) == os.getpid():
        owner = _owner(lock)
        if owner is not None and owner.get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def release_all() -> None:
    """Release every lock this process holds (the command's end, normal or not)."""
    for lock in list(_HELD):
        release(lock.parent)


atexit.register(release_all)


def claim(run_dir: Path, resuming: bool) -> Path:
    """Refuse a folder holding another run (unless it is the run being resumed), then lock it."""
    run_dir = Path(run_dir)
    try:
        taken = not resuming and holds_run(run_dir)
    except OSError as error:
        raise _unwritable(run_dir, error) from None
    if not run_dir.exists():
        _CREATED.add(Path(os.path.abspath(run_dir)))
    if taken:
        raise ConfigError("hydra.run.dir", str(run_dir), message=(
            f"{shown(run_dir)} already holds a run: a new run never writes into another one's folder; choose "
            f"another hydra.run.dir, or continue that run with: cnnlab train resume={shown(run_dir)}"))
    return acquire(run_dir)


def discard_unused(run_dir: Path) -> None:
    """Remove a run folder this process created when the run was refused before it wrote any run file: what is
    left is only Hydra's record (.hydra/, the job's log) and the lock."""
    import shutil

    run_dir = Path(os.path.abspath(run_dir))
    if run_dir not in _CREATED or holds_run(run_dir):
        return
    release(run_dir)
    shutil.rmtree(run_dir / HYDRA_DIR, ignore_errors=True)
    for log in run_dir.glob("*.log"):
        log.unlink(missing_ok=True)
    try:
        run_dir.rmdir()  # only when nothing else is there
    except OSError:
        return
    _CREATED.discard(run_dir)


def is_secondary_rank() -> bool:
    """A DDP rank other than 0: it works in rank 0's run folder, which rank 0 has claimed."""
    return any(os.environ.get(name, "0") != "0" for name in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def _resuming(config: Any, run_dir: Path) -> bool:
    checkpoint = config.get("ckpt_path")
    if checkpoint is None:
        return False
    return Path(str(checkpoint)).resolve().parent.parent == run_dir.resolve()


class RunFolderClaim(Callback):
    """Hydra callback: claim the run folder before Hydra writes into it (see the module's docstring)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        if is_secondary_rank():
            return
        HydraConfig.instance().set_config(config)  # `${hydra:...}` in hydra.run.dir resolves as in the job
        run_dir = Path(str(config.hydra.run.dir))
        try:
            claim(run_dir, _resuming(config, run_dir))
        except ConfigError as error:
            # Hydra turns a callback's exceptions into warnings and goes on: a refused folder must stop the run.
            raise SystemExit(report(str(error))) from None

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        release_all()

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if is_secondary_rank() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        try:
            acquire(Path(HydraConfig.get().runtime.output_dir))
        except ConfigError as error:
            raise SystemExit(report(str(error))) from None

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            release(Path(HydraConfig.get().runtime.output_dir))
