"""`cnnlab list`: every YAML under conf/ is named with a description, one option shows whole, and no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from cnnlab.cli import main
from cnnlab.cli.listing import PRIMARY
from cnnlab.config import CONF_DIR


def listing(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["list", *args])
    out, err = capsys.readouterr()
    return code, out, err


def sections(text: str) -> dict[str, dict[str, str]]:
    """heading -> {option: description} parsed from the listing."""
    found: dict[str, dict[str, str]] = {}
    heading = ""
    for line in text.splitlines():
        if not line.startswith(" "):
            heading = line.rstrip(":")
            found[heading] = {}
        else:
            name, _, rest = line.strip().partition(" ")
            found[heading][name] = rest.strip()
    return found


def test_list_names_every_yaml_in_conf(capsys: pytest.CaptureFixture):
    code, out, _ = listing(capsys)
    assert code == 0
    listed = sections(out)
    primary = next(heading for heading in listed if heading.startswith(PRIMARY))
    yaml_files = sorted(CONF_DIR.rglob("*.yaml"))
    assert len(yaml_files) >= 10
    for path in yaml_files:
        group = path.parent.relative_to(CONF_DIR).as_posix()
        heading = primary if group == "." else group
        assert path.stem in listed[heading], f"{path} is not listed"
        assert listed[heading][path.stem], f"{path} has no description"


def test_list_one_group_and_one_option(capsys: pytest.CaptureFixture):
    code, out, _ = listing(capsys, "loss")
    assert code == 0 and set(sections(out)) == {"loss"}
    code, out, _ = listing(capsys, "loss", "nll")
    assert code == 0 and "_target_: cnnlab.train.losses.nll" in out
    code, out, _ = listing(capsys, "train")
    assert code == 0 and "defaults:" in out and "batch_size:" in out


@pytest.mark.parametrize(("args", "expected"), [(["nope"], "no config group 'nope'"),
                                                (["loss", "nope"], "loss=nope: no such option")])
def test_list_unknown_names_are_one_line(capsys: pytest.CaptureFixture, args: list[str], expected: str):
    code, _, err = listing(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and expected in err


def test_list_and_help_import_no_torch():
    """`cnnlab list` and `--help` stay instant: neither torch nor Lightning is imported."""
    script = ("import sys, io, contextlib\n"
              "from cnnlab.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    assert main(['list']) == 0 and main(['list', 'model']) == 0 and main(['--help']) == 0\n"
              "heavy = {'torch', 'torchvision', 'pytorch_lightning', 'lightning_fabric', 'torchmetrics',\n"
              "         'matplotlib', 'hydra'}\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
