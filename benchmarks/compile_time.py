"""Compile time of crossjax's train step with scanned layers (``nnx.scan``, the default) and unrolled layers.

The step is the one ``CrossEncoder.fit`` builds (``train_step.build_fit_step``: AdamW + clipping, BCE, donated
state, the run's numbers as traced arguments), for randomly initialised BERT-base and MiniLM-sized models. For
each layout the script times tracing + lowering (``jax.jit(...).lower``) and XLA's compilation (``.compile()``)
separately, with the persistent compilation cache off so every number is a real compile, then a few steps to
show the run time per step (median; scan can cost a little at run time; this says how much here), the number
of kernels XLA compiled (fusions), the step's scratch memory (``memory_analysis().temp_size_in_bytes``), and the
page faults and system time of a step (``getrusage``: memory mapped afresh each step, which the kernel zeroes).
``--batch`` is the packed rows of a step and ``--seq`` their length. ``--whole-last-layer`` computes the last layer
for every token, as before ``511eae4`` (by default packed batches compute it for the pairs' first tokens only, a
second compiled layer body besides the scanned one: ``crossjax.models.base.first_tokens_pay``).

Usage:
    python benchmarks/compile_time.py                       # bert-base and minilm, batch 16 x 128, float32
    python benchmarks/compile_time.py --models bert-base --dtypes float32 bfloat16 --steps 3
    python benchmarks/compile_time.py --models minilm --batch 2 --seq 176 --layouts scanned --steps 20
    python benchmarks/compile_time.py --models bert-base --steps 1 --whole-last-layer
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
from train_step import MODELS, build_fit_step, gradient_buffer  # noqa: E402


def measure(model_name: str, dtype_name: str, scan: bool, batch: int, seq: int, steps: int) -> dict:
    import jax

    from crossjax import training

    training.clear_program_cache()  # the other layout's program must not be reused
    program, state, device_batch, healthy, hparams, _, plan = build_fit_step(
        model_name, dtype_name, batch, seq, scan_layers=scan
    )
    gradients = gradient_buffer(state, plan)
    step = program.fn
    start = time.perf_counter()
    lowered = step.lower(state, device_batch, healthy, hparams, gradients)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    # Kernels XLA compiled (fusions: on a CPU each is LLVM code of its own) and the step's scratch memory.
    kernels = len(re.findall(r"= \S+ fusion\(", compiled.as_text()))
    memory = compiled.memory_analysis()
    temp_mib = memory.temp_size_in_bytes / 2**20 if memory is not None else float("nan")
    state, metrics, gradients = compiled(state, device_batch, healthy, hparams, gradients)
    jax.block_until_ready(metrics)
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics, gradients = compiled(state, device_batch, metrics["finite"], hparams, gradients)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    step_ms = 1e3 * statistics.median(times)
    # Page faults and system time per step: memory the step maps afresh (the kernel zeroes each new page).
    faults = (after.ru_minflt - before.ru_minflt) / steps
    system_ms = 1e3 * (after.ru_stime - before.ru_stime) / steps
    return {
        "lower_s": lower_s,
        "compile_s": compile_s,
        "step_ms": step_ms,
        "kernels": kernels,
        "temp_mib": temp_mib,
        "faults": faults,
        "system_ms": system_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (median reported)")
    parser.add_argument("--layouts", nargs="+", default=["unrolled", "scanned"], choices=["unrolled", "scanned"])
    parser.add_argument(
        "--whole-last-layer", action="store_true", help="compute the last layer for every token, not first tokens only"
    )
    args = parser.parse_args()

    import jax

    if args.whole_last_layer:
        from crossjax.models import base

        base.first_tokens_pay = lambda *args: False  # the rule packed_logits asks, answered "never"

    jax.config.update("jax_enable_compilation_cache", False)  # every compile below is a real one
    _bench.print_info("crossjax train-step compile time: scanned vs unrolled layers")
    last_layer = "every token" if args.whole_last_layer else "first tokens only"
    print(f"batch {args.batch} x {args.seq} tokens, last layer computed for {last_layer}\n")
    print(
        "| model | dtype | layers | trace+lower s | XLA compile s | total s | step ms | kernels | XLA temp MiB "
        "| page faults / step | system ms / step |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model_name in args.models:
        for dtype_name in args.dtypes:
            results = {}
            for scan in [layout == "scanned" for layout in args.layouts]:
                r = measure(model_name, dtype_name, scan, args.batch, args.seq, args.steps)
                results[scan] = r
                layout = "scanned" if scan else "unrolled"
                total = r["lower_s"] + r["compile_s"]
                print(
                    f"| {model_name} | {dtype_name} | {layout} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | "
                    f"{total:.2f} | {r['step_ms']:.0f} | {r['kernels']} | {r['temp_mib']:.0f} | {r['faults']:.0f} | "
                    f"{r['system_ms']:.0f} |",
                    flush=True,
                )
            if len(results) < 2:
                continue
            unrolled, scanned = results[False], results[True]
            ratio = (unrolled["lower_s"] + unrolled["compile_s"]) / (scanned["lower_s"] + scanned["compile_s"])
            print(
                f"| {model_name} | {dtype_name} | unrolled / scanned | | | **{ratio:.2f}x** | "
                f"{unrolled['step_ms'] / scanned['step_ms']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
