"""Training and inference throughput: crossjax vs sentence-transformers (legacy ``old_fit`` and ``predict``).

Both libraries get the same model (``--model``, all-MiniLM-L6-v2 by default, one output label, a fresh head),
the same data (the first ``--pairs`` STS-B train pairs, labels score/5), the same batch size, ``max_length``
128, float32, shuffled batches, and run in this one process, so they share the machine.

Training: each library runs ``fit`` for ``--epochs`` epochs. An evaluator that only reads the clock is called at
the end of every epoch (by then the epoch's device work is finished: crossjax fetches the losses first, torch
is synchronous on CPU and synchronised on CUDA), so each epoch's wall time is known. Epoch 1 holds crossjax's
compilations (one per bucket shape) and is reported on its own, with the seconds JAX spent tracing, lowering
and compiling; the steady-state figure is pairs/s over epochs 2..N. ``--trials`` repeats both fits,
alternating the libraries so that both see the same background load, and reports the best trial of each.

Inference: ``predict`` on the same pairs with the same batch size; the first call (crossjax compiles there) is
reported separately, steady state is the fastest of ``--repeats`` calls, again alternating the libraries.

Compilation: every crossjax fit starts as a first fit in a fresh process would: the process's jitted steps are
cleared before each fit (``crossjax.training.clear_program_cache``) and the persistent compilation cache is off
(``CROSSJAX_COMPILATION_CACHE=0``), or, with ``--cache-dir DIR``, on in DIR: run the script twice with the same
DIR and the second run measures fits with a warm persistent cache (what a user's second run of the same model
and shapes sees). ``benchmarks/compile_cache.py`` measures what each cache saves.

Threads: torch uses as many intra-op threads as there are CPU cores available to this process, which is
the size of XLA's CPU thread pool. ``--cores N`` first restricts the process to N of its cores (CPU
affinity, set before JAX and torch start), so both libraries run with N threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: data readers, default checkpoint)

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


# crossjax's ``CrossEncoder(scan_layers=...)`` (scanned by default).
SCAN = {"scan": True, "unrolled": False}


class CompileClock:
    """Sums the seconds JAX reports for tracing, lowering and compiling."""

    def __init__(self) -> None:
        import jax.monitoring

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration


class EpochClock:
    """An "evaluator" that records the time at the end of each epoch and scores 0."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.times: list[float] = []

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return 0.0


def read_pairs(n: int, data_dir: Path = _common.SHARED_DATA) -> list[tuple[str, str, float]]:
    stsb = data_dir / "stsb"
    rows = _common.read_stsb_csv(stsb, "train") if (stsb / "stsb-en-train.csv").is_file() else _common.hub_stsb("train")
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} STS-B train pairs, asked for {n}")
    return rows[:n]


def st_padding_efficiency(lengths: np.ndarray, batch_size: int, seed: int) -> float:
    """Real / computed tokens of sentence-transformers' batches: random order, each padded to its longest."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    real = computed = 0
    for i in range(0, len(order), batch_size):
        batch = lengths[order[i : i + batch_size]]
        real += int(batch.sum())
        computed += int(batch.max()) * len(batch)
    return real / computed


def fit_crossjax(args, rows, compile_clock: CompileClock) -> dict:
    from crossjax import CrossEncoder, DataLoader, InputExample, training

    training.clear_program_cache()  # a later trial would reuse the first one's train step: compile it again
    model = CrossEncoder(
        args.model,
        num_labels=1,
        max_length=args.max_length,
        seed=args.seed,
        scan_layers=SCAN[args.scan_layers],
        max_shapes=args.max_shapes,
    )
    examples = [InputExample(texts=[a, b], label=s) for a, b, s in rows]
    loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size, seed=args.seed)
    clock = EpochClock()
    compiled_before = compile_clock.seconds
    start = time.perf_counter()
    summary = model.fit(
        loader,
        evaluator=clock,
        epochs=args.epochs,
        warmup_steps=args.warmup_steps,
        save_best_model=False,
        show_progress_bar=False,
        seed=args.seed,
    )
    return {
        "model": model,
        "start": start,
        "epoch_ends": clock.times,
        "compile_s": compile_clock.seconds - compiled_before,
        "compilations": summary["compilations"],
        "shapes": summary["compiled_shapes"],
        "padding_efficiency": summary["padding_efficiency"],
    }


def fit_st(args, rows) -> dict:
    import torch
    from sentence_transformers import CrossEncoder, InputExample
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length)
    examples = [InputExample(texts=[a, b], label=s) for a, b, s in rows]
    loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size)
    clock = EpochClock(cuda=torch.cuda.is_available())
    start = time.perf_counter()
    model.old_fit(
        loader,
        evaluator=clock,
        epochs=args.epochs,
        warmup_steps=args.warmup_steps,
        save_best_model=False,
        show_progress_bar=False,
    )
    return {"model": model, "start": start, "epoch_ends": clock.times}


def rates(run: dict, pairs: int) -> dict:
    ends = run["epoch_ends"]
    first = ends[0] - run["start"]
    total = ends[-1] - run["start"]
    steady = (len(ends) - 1) * pairs / (ends[-1] - ends[0]) if len(ends) > 1 else float("nan")
    return {
        "first_epoch_s": first,
        "first_epoch_pps": pairs / first,
        "total_pps": len(ends) * pairs / total,
        "steady_pps": steady,
    }


def time_predict(model, pairs, batch_size: int) -> float:
    start = time.perf_counter()
    model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
    return time.perf_counter() - start


def print_achieved_flops(config, lengths: np.ndarray, pairs: int, crossjax_pps: dict, st_pps: dict) -> None:
    """Real-token GFLOP/s of each library's steady fit and predict (each pair's FLOPs at its own length, the
    same numerator for both: ``train_step.real_token_flops``) against each library's own float32 matmul peak at
    this model's layer shapes, measured now (``matmul_peak.peaks``)."""
    from matmul_peak import peaks
    from train_step import real_token_flops

    peak = peaks(config.hidden_size, config.intermediate_size)
    per_pair = {
        "fit": real_token_flops(config, lengths, training=True) / pairs,
        "predict": real_token_flops(config, lengths, training=False) / pairs,
    }
    print(
        f"\nmatmul peak at this model's layer shapes (float32, 1,024 and 4,096 tokens): XLA {peak['xla']:.0f} "
        f"GFLOP/s, PyTorch {peak['torch']:.0f} GFLOP/s"
    )
    print("| real-token GFLOP/s (% of the library's matmul peak) | crossjax | sentence-transformers |")
    print("|---|---:|---:|")
    for what in ("fit", "predict"):
        jx = crossjax_pps[what] * per_pair[what] / 1e9
        st = st_pps[what] * per_pair[what] / 1e9
        print(
            f"| {what}, steady state | {jx:.1f} ({100 * jx / peak['xla']:.0f}%) | "
            f"{st:.1f} ({100 * st / peak['torch']:.0f}%) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--pairs", type=int, default=512, help="the first N STS-B train pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="epoch 1 is the warm-up (compilation)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="learning-rate warm-up, as in fit")
    parser.add_argument("--trials", type=int, default=2, help="fits per library (alternating); best reported")
    parser.add_argument("--cores", type=int, default=None, help="use only N of the available CPU cores")
    parser.add_argument("--repeats", type=int, default=3, help="timed predict calls per library (alternating)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--cache-dir", default=None, help="persistent compilation cache to use (default: off)")
    parser.add_argument("--max-shapes", type=int, default=2, help="crossjax's CrossEncoder(max_shapes=...)")
    parser.add_argument("--scan-layers", choices=list(SCAN), default="scan", help="crossjax's layer layout")
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA, help="holds stsb/ (else the hub's)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is the compile/warm-up epoch")

    # Cold: the first epoch compiles, as in a first run ever. --cache-dir: a persistent cache kept across runs.
    os.environ["CROSSJAX_COMPILATION_CACHE"] = args.cache_dir or "0"
    available = sorted(os.sched_getaffinity(0))
    if args.cores is not None:
        if not 1 <= args.cores <= len(available):
            parser.error(f"--cores must be between 1 and {len(available)}")
        os.sched_setaffinity(0, available[: args.cores])  # before JAX and torch size their thread pools

    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    compile_clock = CompileClock()
    _bench.print_info(
        "train_throughput",
        {
            "model": args.model,
            "setting": f"{args.pairs} STS-B train pairs, batch {args.batch_size}, max_length {args.max_length}, "
            f"float32, {args.epochs} epochs x {args.trials} trials, predict x {args.repeats}",
        },
    )

    rows = read_pairs(args.pairs, args.data_dir)
    pairs = [(a, b) for a, b, _ in rows]

    jx_runs, st_runs = [], []
    for trial in range(args.trials):
        order = ("crossjax", "st") if trial % 2 == 0 else ("st", "crossjax")
        for lib in order:
            if lib == "crossjax":
                run = fit_crossjax(args, rows, compile_clock)
                jx_runs.append(run)
            else:
                run = fit_st(args, rows)
                st_runs.append(run)
            r = rates(run, args.pairs)
            print(
                f"trial {trial + 1} {lib:>8} fit: first epoch {r['first_epoch_s']:.1f} s "
                f"({r['first_epoch_pps']:.1f} pairs/s), steady {r['steady_pps']:.1f} pairs/s"
                + (f", compile {run['compile_s']:.1f} s" if lib == "crossjax" else "")
                + f"; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )

    def best_run(runs):  # the least disturbed trial: on a shared machine, other load only slows a run down
        return max(runs, key=lambda run: rates(run, args.pairs)["steady_pps"])

    jx, st = best_run(jx_runs), best_run(st_runs)
    jr, sr = rates(jx, args.pairs), rates(st, args.pairs)

    # Predict: first call, then alternating timed repeats.
    jx_model, st_model = jx["model"], st["model"]
    jx_first = time_predict(jx_model, pairs, args.batch_size)
    st_first = time_predict(st_model, pairs, args.batch_size)
    jx_times, st_times = [], []
    for _ in range(args.repeats):
        jx_times.append(time_predict(jx_model, pairs, args.batch_size))
        st_times.append(time_predict(st_model, pairs, args.batch_size))
    print(f"predict seconds: crossjax {[round(t, 2) for t in jx_times]}, ST {[round(t, 2) for t in st_times]}")
    jx_pred = args.pairs / min(jx_times)
    st_pred = args.pairs / min(st_times)

    texts_a, texts_b = [a for a, _ in pairs], [b for _, b in pairs]
    encoded = jx_model.tokenizer(texts_a, texts_b, truncation="longest_first", max_length=args.max_length)
    lengths = np.asarray([len(ids) for ids in encoded["input_ids"]])
    st_eff = st_padding_efficiency(lengths, args.batch_size, args.seed)

    print()
    print(f"tokens per pair: mean {lengths.mean():.1f}, max {lengths.max()}")
    print(
        f"crossjax: {jx['compilations']} train compilations {jx['shapes']}, {jx['compile_s']:.1f} s tracing+compiling "
        f"in the best trial, padding efficiency {100 * jx['padding_efficiency']:.1f}% "
        f"(sentence-transformers' per-batch padding: {100 * st_eff:.1f}%)"
    )
    header = f"| {'':<46} | {'crossjax':>10} | {'sentence-transformers':>21} | {'crossjax / ST':>13} |"
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")

    def line(name: str, a: float, b: float, unit: str = "pairs/s") -> None:
        print(f"| {name + ' (' + unit + ')':<46} | {a:>10.1f} | {b:>21.1f} | {a / b:>13.2f} |")

    line("fit, steady state (epochs 2..N)", jr["steady_pps"], sr["steady_pps"])
    line("fit, first epoch (crossjax compiles)", jr["first_epoch_pps"], sr["first_epoch_pps"])
    line("fit, all epochs", jr["total_pps"], sr["total_pps"])
    line("fit, first epoch", jr["first_epoch_s"], sr["first_epoch_s"], "s")
    line("predict, steady state (best call)", jx_pred, st_pred)
    line("predict, first call", args.pairs / jx_first, args.pairs / st_first)
    print(f"\nratio crossjax/ST: fit {jr['steady_pps'] / sr['steady_pps']:.2f}, predict {jx_pred / st_pred:.2f}")
    print_achieved_flops(jx_model.config, lengths, args.pairs, {"fit": jr["steady_pps"], "predict": jx_pred},
                         {"fit": sr["steady_pps"], "predict": st_pred})  # fmt: skip
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
