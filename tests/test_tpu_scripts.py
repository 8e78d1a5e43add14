"""The Cloud TPU helper scripts in tpu/: dry-run output, validation, and the runner (fake gcloud)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU = REPO / "tpu"
SCRIPTS = ["create", "setup", "launch", "fetch", "delete", "run_all"]
TARGET = ["--name", "crossjax-v4", "--zone", "us-central2-b"]
FORWARDED = [
    "--output",
    "gs://my-bucket/run1",
    "--checkpoint-path",
    "gs://my-bucket/ckpt",
    "--batch-size",
    "64",
]

FAKE_GCLOUD = """#!/bin/sh
echo "$0 $*" >> "$FAKE_LOG"
case "$*" in *describe*) echo ACTIVE ;; esac
exit "${FAKE_RC:-0}"
"""


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH whose gcloud / gsutil / kubectl only record their arguments in a log file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "gsutil", "kubectl"):
        exe = bin_dir / tool
        exe.write_text(FAKE_GCLOUD)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def run(script, *args, fake_bin=None, rc=0, cwd=None):
    env = dict(os.environ)
    if fake_bin is not None:
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
        env["FAKE_LOG"] = str(fake_bin / "calls.log")
        env["FAKE_RC"] = str(rc)
    return subprocess.run(
        [sys.executable, str(TPU / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=60,
    )


def commands(proc) -> list[list[str]]:
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def calls(fake_bin) -> list[list[str]]:
    log = fake_bin / "calls.log"
    if not log.exists():
        return []
    return [shlex.split(line)[1:] for line in log.read_text().splitlines()]


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


# --------------------------------------------------------------------------- dry runs


def test_create_v4_16(fake_bin):
    (cmd,) = commands(run("create", *TARGET, "--accelerator-type", "v4-16", "--dry-run", fake_bin=fake_bin))
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "crossjax-v4"]
    assert flag(cmd, "--accelerator-type") == "v4-16"
    assert flag(cmd, "--version") == "tpu-ubuntu2204-base"
    assert flag(cmd, "--zone") == "us-central2-b"
    assert calls(fake_bin) == []  # nothing executed in a dry run


DEFAULT_VERSIONS = [
    ("v5litepod-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-16", "v5p-16", "v2-alpha-tpuv5"),
]


@pytest.mark.parametrize("acc, api_name, version", DEFAULT_VERSIONS)
def test_create_default_versions(acc, api_name, version):
    (cmd,) = commands(run("create", *TARGET, "--accelerator-type", acc, "--dry-run"))
    assert flag(cmd, "--accelerator-type") == api_name
    assert flag(cmd, "--version") == version


def test_create_explicit_version_and_project():
    args = ["--accelerator-type", "v4-16", "--version", "my-runtime", "--project", "proj", "--reserved"]
    (cmd,) = commands(run("create", *TARGET, *args, "--dry-run"))
    assert flag(cmd, "--version") == "my-runtime"
    assert flag(cmd, "--project") == "proj"
    assert "--reserved" in cmd and "--spot" not in cmd


def test_create_queued_spot(fake_bin):
    args = ["--accelerator-type", "v4-16", "--queued", "--spot", "--wait", "--dry-run"]
    create, wait = commands(run("create", *TARGET, *args, fake_bin=fake_bin))
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "crossjax-v4"]
    assert flag(create, "--node-id") == "crossjax-v4"
    assert flag(create, "--accelerator-type") == "v4-16"
    assert flag(create, "--runtime-version") == "tpu-ubuntu2204-base"
    assert "--spot" in create
    assert wait[3:6] == ["queued-resources", "describe", "crossjax-v4"]
    assert calls(fake_bin) == []


def test_setup_all_workers(fake_bin, tmp_path):
    wheel = tmp_path / "crossjax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    cmds = commands(run("setup", *TARGET, "--wheel", str(wheel), "--dry-run", fake_bin=fake_bin))
    assert all(c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] for c in cmds)
    assert all("--worker=all" in c for c in cmds)
    scps = [c for c in cmds if c[4] == "scp"]
    assert any(str(wheel) in c for c in scps)
    install = cmds[-1][cmds[-1].index("--command") + 1]
    assert "jax[tpu]" in install and wheel.name in install
    assert calls(fake_bin) == []


def test_setup_package_spec():
    spec = "crossjax @ git+https://github.com/org/crossjax@main"
    cmds = commands(run("setup", *TARGET, "--package", spec, "--no-examples", "--dry-run"))
    assert not any(c[4] == "scp" for c in cmds)
    assert shlex.quote(spec) in cmds[-1][cmds[-1].index("--command") + 1]


def test_launch_two_hosts(fake_bin):
    proc = run(
        "launch", *TARGET, "--accelerator-type", "v4-16", "--dry-run", "--", *FORWARDED, fake_bin=fake_bin
    )
    (cmd,) = commands(proc)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "crossjax-v4"]
    assert "--worker=all" in cmd
    remote = flag(cmd, "--command")
    assert "CROSSJAX_DISTRIBUTED=1" in remote and "PYTHONUNBUFFERED=1" in remote
    assert "examples/training_stsbenchmark.py" in remote
    assert shlex.join(FORWARDED) in remote
    assert "$(hostname).log" in remote  # one log file per worker
    assert "2 host(s)" in proc.stderr and "8 JAX devices" in proc.stderr
    assert calls(fake_bin) == []


def test_launch_other_example_and_detach():
    args = ["--example", "training_nli.py", "--detach", "--env", "HF_HOME=/tmp/hf", "--dry-run"]
    (cmd,) = commands(run("launch", *TARGET, *args))
    remote = flag(cmd, "--command")
    assert "examples/training_nli.py" in remote and "nohup" in remote and "HF_HOME=/tmp/hf" in remote


def test_launch_rejects_indivisible_global_batch():
    proc = run("launch", *TARGET, "--accelerator-type", "v4-16", "--dry-run", "--", "--batch-size=60")
    assert proc.returncode != 0
    assert "GLOBAL batch size" in proc.stderr and "8 JAX devices" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("script", ["launch", "run_all"])
def test_a_dry_run_flag_after_the_double_dash_is_refused_before_any_command_runs(script, fake_bin):
    """After '--' a flag goes to the example: the chain itself would run (and create a billed TPU) and the example
    would fail on the unknown flag. Refused, and no gcloud command is called."""
    extra = ["--accelerator-type", "v4-16"]
    proc = run(script, *TARGET, *extra, "--", "--batch-size", "64", "--dry-run", fake_bin=fake_bin)
    assert proc.returncode == 2 and "--dry-run after '--'" in proc.stderr and "put it before '--'" in proc.stderr
    assert calls(fake_bin) == []


def test_launch_checks_the_examples_default_batch_size_when_none_is_given():
    """Without --batch-size an example trains at its default global batch (16): a slice of 32 devices cannot split
    it, so the launch stops here, not on the pod after set-up; a given size that divides is taken."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("crossjax_tpu_common", TPU / "_common.py")
    tpu_common = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tpu_common  # its dataclasses look their module up
    spec.loader.exec_module(tpu_common)
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import _common as examples_common
    finally:
        sys.path.remove(str(REPO / "examples"))
    parser = examples_common.build_parser("x", evaluation_steps=0, output_prefix="x")
    default = next(a.default for a in parser._actions if a.dest == "batch_size")
    assert isinstance(parser, argparse.ArgumentParser) and default == tpu_common.EXAMPLE_DEFAULT_BATCH_SIZE
    acc = ["--accelerator-type", "v5litepod-32", "--dry-run"]
    proc = run("launch", *TARGET, *acc)
    assert proc.returncode == 1 and "default --batch-size 16 is the GLOBAL batch size" in proc.stderr
    assert "32 JAX devices of v5litepod-32" in proc.stderr and proc.stdout == ""
    (cmd,) = commands(run("launch", *TARGET, *acc, "--", "--batch-size", "64"))
    assert "--batch-size 64" in flag(cmd, "--command")
    assert commands(run("launch", *TARGET, "--accelerator-type", "v4-16", "--dry-run"))  # 16 splits over 8


def test_launch_takes_the_reranker_batch_size_per_device():
    """training_reranker.py's --batch-size is per device (per_device_train_batch_size): any size fits a slice,
    and the global size it makes is noted; the other examples' global sizes are still checked."""
    acc = ["--accelerator-type", "v4-16", "--dry-run"]
    proc = run("launch", *TARGET, *acc, "--example", "training_reranker.py", "--", "--batch-size", "4")
    (cmd,) = commands(proc)
    assert "examples/training_reranker.py --batch-size 4" in flag(cmd, "--command")
    assert "--batch-size 4 is per device: a global batch of 32 on v4-16" in proc.stderr
    proc = run("launch", *TARGET, *acc, "--example", "training_nli.py", "--", "--batch-size", "4")
    assert proc.returncode != 0 and "GLOBAL batch size" in proc.stderr


def test_fetch_from_worker_0_and_bucket(fake_bin):
    cmds = commands(
        run("fetch", *TARGET, "--remote-path", "crossjax/output/run1", "--dry-run", fake_bin=fake_bin)
    )
    scp = cmds[-1]
    assert scp[3:5] == ["tpu-vm", "scp"] and "--worker=0" in scp and "--recurse" in scp
    assert "crossjax-v4:crossjax/output/run1" in scp
    cmds = commands(run("fetch", *TARGET, "--gcs", "gs://my-bucket/run1", "--dry-run", fake_bin=fake_bin))
    assert cmds[-1][:4] == ["gcloud", "storage", "cp", "--recursive"] and "gs://my-bucket/run1" in cmds[-1]
    assert calls(fake_bin) == []


def test_delete(fake_bin):
    (cmd,) = commands(run("delete", *TARGET, "--quiet", "--dry-run", fake_bin=fake_bin))
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "crossjax-v4"]
    assert flag(cmd, "--zone") == "us-central2-b" and "--quiet" in cmd
    (cmd,) = commands(run("delete", *TARGET, "--queued", "--dry-run", fake_bin=fake_bin))
    assert cmd[3:6] == ["queued-resources", "delete", "crossjax-v4"] and "--force" in cmd
    assert calls(fake_bin) == []


def test_run_all_chain_order(fake_bin):
    args = ["--accelerator-type", "v4-16", "--queued", "--output", "gs://my-bucket/run1", "--dry-run"]
    cmds = commands(run("run_all", *TARGET, *args, "--", "--batch-size", "64", fake_bin=fake_bin))
    verbs = [" ".join(c[3:5]) if c[0] == "gcloud" and c[1] == "compute" else " ".join(c[:3]) for c in cmds]
    order = [
        "queued-resources create",
        "queued-resources describe",
        "tpu-vm ssh",
        "gcloud storage cp",
        "queued-resources delete",
    ]
    positions = [verbs.index(v) for v in order]
    assert positions == sorted(positions), verbs
    launch = next(c for c in cmds if "--command" in c and "CROSSJAX_DISTRIBUTED=1" in flag(c, "--command"))
    assert "--output gs://my-bucket/run1 --batch-size 64" in flag(launch, "--command")
    assert calls(fake_bin) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    proc = run(script, "--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("acc", ["v9-8", "v4-12", "v5litepod-12", "tpu"])
def test_bad_accelerator_type(acc, fake_bin):
    proc = run("create", *TARGET, "--accelerator-type", acc, "--dry-run", fake_bin=fake_bin)
    assert proc.returncode != 0
    assert "--accelerator-type" in proc.stderr and acc in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert calls(fake_bin) == []


def test_bad_name():
    proc = run("delete", "--name", "Bad_Name", "--zone", "z", "--dry-run")
    assert proc.returncode != 0 and "invalid TPU name" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- real runs with a fake gcloud


def test_runs_commands_without_dry_run(fake_bin):
    proc = run("create", *TARGET, "--accelerator-type", "v4-16", "--queued", "--wait", fake_bin=fake_bin)
    assert proc.returncode == 0, proc.stderr
    got = calls(fake_bin)
    assert [c[2:4] for c in got] == [["queued-resources", "create"], ["queued-resources", "describe"]]


def test_failure_stops_with_clear_message(fake_bin):
    proc = run("setup", *TARGET, "--no-examples", fake_bin=fake_bin, rc=3)
    assert proc.returncode != 0
    assert "exit status 3" in proc.stderr and "Traceback" not in proc.stderr
    assert len(calls(fake_bin)) == 1  # stopped after the first failing command


def test_fetch_into_a_file_is_refused_before_copying(fake_bin, tmp_path):
    (tmp_path / "taken").write_text("notes")
    proc = run("fetch", *TARGET, "--remote-path", "out", "--dest", str(tmp_path / "taken"), fake_bin=fake_bin)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "taken is a file; name a folder" in proc.stderr and calls(fake_bin) == []


def test_run_all_failure_prints_delete_command(fake_bin):
    proc = run("run_all", *TARGET, "--accelerator-type", "v4-16", "--no-examples", fake_bin=fake_bin, rc=1)
    assert proc.returncode != 0
    assert "gcloud compute tpus tpu-vm delete crossjax-v4" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- GKE manifest


def test_gke_manifest_v4_16():
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all((TPU / "gke" / "crossjax-job.yaml").read_text()) if d]
    job = next(d for d in docs if d["kind"] == "Job")
    service = next(d for d in docs if d["kind"] == "Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2  # v4-16: 2 hosts
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v4-podslice"
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x2x2"
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    assert container["resources"]["requests"]["google.com/tpu"] == 4
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CROSSJAX_DISTRIBUTED"] == "1"
    assert "examples/training_stsbenchmark.py" in container["command"]


def test_gke_image_can_write_the_jobs_gs_outputs():
    """The Job writes --output and --checkpoint-path to gs://, which fsspec reaches only through gcsfs (not a
    crossjax dependency): the image must install it, as tpu/setup.py does on TPU VMs."""
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all((TPU / "gke" / "crossjax-job.yaml").read_text()) if d]
    job = next(d for d in docs if d["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert any(str(arg).startswith("gs://") for arg in container["command"] + container.get("args", []))
    lines = (TPU / "gke" / "Dockerfile").read_text().splitlines()
    installs = [line for line in lines if line.startswith("RUN") and "pip install" in line]
    assert any("gcsfs" in shlex.split(line.split("pip install", 1)[1]) for line in installs), installs
