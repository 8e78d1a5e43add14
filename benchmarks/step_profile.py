"""Where a train step's time goes: XLA's per-kernel times of the step ``fit`` compiles, summed by kernel kind.

The step is ``train_step.build_fit_step``'s (AdamW + clipping, BCE, donated state), for a random MiniLM- or
BERT-base-sized model on one packed shape (``--rows`` rows of ``--tokens`` tokens). The script runs a few
steps, then ``--steps`` more under ``jax.profiler.trace`` with XLA:CPU's per-thunk trace events on
(``--xla_cpu_enable_xprof_traceme``), and prints the milliseconds per step of each kind of kernel
(``ynn_fusion``/``dot``: the matmuls; ``multiply_add_fusion``: AdamW; ``broadcast_select_fusion``: selects;
``wrapped_broadcast``: buffers filled with zeros; ``dynamic-update-slice``: scanned layers' stacking) and the
largest single kernels. The profiler adds a little time to every kernel: compare kinds within one run. On a GPU
the names are XLA:GPU fusions and cuBLAS kernels (RESULTS.md, "Session 6", has an H200 profile).

Usage:
    python benchmarks/step_profile.py                          # MiniLM, 2 rows x 176 tokens (16 STS-B pairs)
    python benchmarks/step_profile.py --model bert-base --rows 16 --tokens 128 --layout unrolled
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
os.environ.setdefault("CROSSJAX_COMPILATION_CACHE", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
from train_step import MODELS, build_fit_step, gradient_buffer  # noqa: E402

# Trace events that are not kernels: the executor's spans, thread-pool waits, Python frames.
NOT_KERNELS = ("ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "ParseArguments")


def kernel_times(trace_dir: str, steps: int) -> collections.Counter:
    """Milliseconds per step of every kernel name in the Perfetto trace that jax.profiler wrote."""
    [path] = Path(trace_dir).rglob("*.trace.json.gz")
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    times: collections.Counter = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith("$") or name.startswith(NOT_KERNELS):
            continue
        times[name] += event.get("dur", 0) / 1000 / steps
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="minilm")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=176)
    parser.add_argument("--layout", choices=["scan", "unrolled"], default="scan")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--top", type=int, default=12, help="largest single kernels to list")
    args = parser.parse_args()

    import jax

    step = f"{args.model}, {args.rows} rows x {args.tokens} tokens, {args.layout}, {args.dtype}"
    _bench.print_info("step_profile", {"step": step})
    program, state, batch, healthy, hparams, _, plan = build_fit_step(
        args.model, args.dtype, args.rows, args.tokens, scan_layers=args.layout == "scan"
    )
    gradients = gradient_buffer(state, plan)
    for _ in range(3):
        state, metrics, gradients = program.fn(state, batch, healthy, hparams, gradients)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, metrics, gradients = program.fn(state, batch, healthy, hparams, gradients)
            jax.block_until_ready(metrics)
        times = kernel_times(trace_dir, args.steps)

    kinds: collections.Counter = collections.Counter()
    for name, ms in times.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ms
    print(f"\nkernel time per step: {sum(times.values()):.1f} ms")
    print(f"| {'kernel kind':<40} | {'ms/step':>8} | {'share':>6} |\n|{'-' * 42}|{'-' * 10}|{'-' * 8}|")
    for kind, ms in kinds.most_common():
        if ms >= 0.5:
            print(f"| {kind:<40} | {ms:>8.1f} | {100 * ms / sum(times.values()):>5.1f}% |")
    print(f"\nlargest kernels: {', '.join(f'{n} {ms:.1f} ms' for n, ms in times.most_common(args.top))}")


if __name__ == "__main__":
    main()
