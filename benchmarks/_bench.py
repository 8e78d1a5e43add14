"""Helpers shared by the benchmark scripts: a description of the machine and of the code being measured."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))  # examples/_common.py: data readers, default checkpoint

PACKAGES = ("crossjax", "jax", "jaxlib", "flax", "optax", "torch", "transformers", "sentence-transformers")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def crossjax_commit() -> str:
    """``git describe`` of this checkout, marked ``+dirty`` when src/ has uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, str]:
    import jax

    info = {
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0))),
        "jax devices": f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})",
        "python": platform.python_version(),
        "crossjax commit": crossjax_commit(),
    }
    for name in PACKAGES:
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = "not installed"
    try:
        import torch

        info["torch device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        info["torch threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return info


def print_info(title: str, extra: dict[str, str] | None = None) -> None:
    print(f"# {title}")
    for key, value in {**machine_info(), **(extra or {})}.items():
        print(f"{key:>22}: {value}")
    print(f"{'load average':>22}: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
