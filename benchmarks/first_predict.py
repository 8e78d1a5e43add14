"""Where a cold first ``predict`` of a fresh process spends its time, program by program.

Issue 8 asks the first predict call to be as fast as sentence-transformers'; what is left is compilation. This
runs ``predict`` on the first ``--pairs`` STS-B train pairs in a fresh process with the persistent compilation
cache off, then ``--repeats`` more calls, and prints the programs JAX traced, lowered and compiled in the first
call (``jax.monitoring``) and the process CPU time of a compile-bound call (a few pairs): more CPU than wall time
means XLA compiled on several cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: data readers, default checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA, help="holds stsb/ (else the hub's)")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a first call of 8 pairs: compile-bound, CPU vs wall")
    parser.add_argument(
        "--emitters-ab",
        action="store_true",
        help="also compile the first call's predict program with XLA:CPU's legacy emitters "
        "(xla_cpu_use_fusion_emitters=False) and time both, alternating, over the call's batches",
    )
    args = parser.parse_args()
    os.environ["CROSSJAX_COMPILATION_CACHE"] = "0"  # a cold process: compile everything
    _bench.print_info("cold first predict", {"model": str(args.model), "pairs": "8" if args.small else str(args.pairs)})

    import jax

    events: list[tuple[str, str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: events.append((kw.get("fun_name", "?"), name.rsplit("/", 1)[-1], secs))
    )
    from crossjax import CrossEncoder

    stsb = args.data_dir / "stsb"
    rows = _common.read_stsb_csv(stsb, "train") if (stsb / "stsb-en-train.csv").is_file() else _common.hub_stsb("train")
    pairs = [(a, b) for a, b, _ in rows][: 8 if args.small else args.pairs]
    model = CrossEncoder(str(args.model), num_labels=1)
    events.clear()  # loading's programs are not the call's
    wall, cpu = time.perf_counter(), time.process_time()
    model.predict(pairs, batch_size=args.batch_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    first = list(events)
    later = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.predict(pairs, batch_size=args.batch_size)
        later.append(time.perf_counter() - started)
    print(f"first call: {wall:.3f} s wall, {cpu:.3f} s process CPU ({cpu / wall:.2f} cores); {len(pairs)} pairs")
    print(f"later calls: {', '.join(f'{t:.3f}' for t in later)} s")
    per_program: dict[str, dict[str, float]] = defaultdict(dict)
    for program, event, seconds in first:
        per_program[program][event] = per_program[program].get(event, 0.0) + seconds
    for program, spans in per_program.items():
        print(f"  {program}: " + ", ".join(f"{event} {seconds:.3f} s" for event, seconds in sorted(spans.items())))
    if args.emitters_ab:
        emitters_ab(model, pairs, args.batch_size)


def emitters_ab(model, pairs: list, batch_size: int, rounds: int = 6) -> None:
    """The predict program of the call's first batch compiled twice in this process, with XLA:CPU's default
    (fusion) emitters and with the legacy ones (each a real compile: JAX keys compiled programs by their options),
    then both run alternately ``rounds`` times over as many batches as the call has."""
    import numpy as np

    program = model._predict_program(model.compute_dtype)
    captured = []
    real = program.fn

    class Stop(Exception):
        pass

    def capture(*call_args):
        captured.append(call_args)
        raise Stop

    program.fn = capture
    try:
        model.predict(pairs, batch_size=batch_size)
    except Stop:
        pass
    finally:
        program.fn = real
    call_args = captured[0]
    batches = -(-len(pairs) // batch_size)
    lowered = real.jitted.lower(*call_args)
    import jax

    jax.clear_caches()  # the first call compiled the default form: compile it again, timed
    compiled = {}
    for name, options in (("default emitters", {}), ("legacy emitters", {"xla_cpu_use_fusion_emitters": False})):
        started = time.perf_counter()
        compiled[name] = lowered.compile(compiler_options=options)
        seconds = time.perf_counter() - started
        compiled[name](*call_args).block_until_ready()
        print(f"{name}: XLA compile {seconds:.3f} s (shape {tuple(call_args[2]['input_ids'].shape)})")
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, fn in compiled.items():
            started = time.perf_counter()
            for _ in range(batches):
                out = fn(*call_args)
            out.block_until_ready()
            times[name].append(time.perf_counter() - started)
    for name, spans in times.items():
        print(f"{name}: {batches} batches in {min(spans):.3f} s at best, median {np.median(spans):.3f} s")


if __name__ == "__main__":
    main()
