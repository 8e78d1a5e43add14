"""The numerical parity tests once more, compiled with XLA's default flags: the code users run.

The rest of the suite compiles with ``conftest.FAST_CODEGEN_FLAGS`` (LLVM's optimizations off, XLA's older kernel
emitters), which generate other kernels for the same programs. Kernels may differ in the last bit of a
transcendental function, so the parity tests against PyTorch and sentence-transformers run here again, in a
subprocess with XLA's defaults: logits of every family in float32 and bfloat16, every activation's values and
gradients, the losses, the layers' gradients, and legacy ``fit``'s step losses against ``old_fit``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import FAST_CODEGEN_FLAGS, REPO

PARITY_TESTS = (
    "tests/test_models_parity.py::test_logits_equal_pytorch_float32",
    "tests/test_models_parity.py::test_logits_close_in_bfloat16",
    "tests/test_models_parity.py::test_every_activation_name_equals_transformers_in_value_and_gradient",
    "tests/test_losses.py",
    "tests/test_layer_gradients.py",
    "tests/test_fit_parity.py::test_per_step_losses_match_sentence_transformers",
    "tests/test_fit_parity.py::test_final_predictions_match_sentence_transformers",
)


def _default_codegen_xla_flags() -> str:
    fast = {flag.split("=")[0] for flag in FAST_CODEGEN_FLAGS}
    return " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split() if flag.split("=")[0] not in fast)


@pytest.mark.skipif(
    os.environ.get("CROSSJAX_TEST_FAST_CODEGEN", "1") == "0", reason="this run already compiles with XLA's defaults"
)
def test_parity_tests_pass_with_xla_default_codegen(tmp_path):
    env = dict(os.environ, CROSSJAX_TEST_FAST_CODEGEN="0", XLA_FLAGS=_default_codegen_xla_flags())
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"),
            *(f"--basetemp={tmp_path / 'run'}", *PARITY_TESTS),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0 and " passed" in summary and "failed" not in summary, (
        done.stdout[-6000:] + done.stderr[-2000:]
    )
