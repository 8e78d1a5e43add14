"""``predict`` at several batch sizes: crossjax vs sentence-transformers on the same pairs, in one process.

Both libraries load the same checkpoint (``--model``, all-MiniLM-L6-v2 by default, one label, a fresh head: the
scores differ, the work does not) and score the first ``--pairs`` STS-B train pairs, ``max_length`` 128,
float32. For each batch size crossjax's first call (it traces and compiles that call's shapes; the
persistent compilation cache is off) is reported on its own, then both libraries' calls alternate
``--repeats`` times and the fastest of each is kept (other load on a shared machine only slows a call down).
crossjax's columns say which packed shapes it computed and how many of their tokens were real.

Usage:
    python benchmarks/predict_batch_sizes.py                          # batch 16, 32, 64, 128, 256
    python benchmarks/predict_batch_sizes.py --batch-sizes 32 --pairs 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402
from train_throughput import read_pairs, time_predict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--pairs", type=int, default=512, help="the first N STS-B train pairs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per library and batch size")
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA, help="holds stsb/ (else the hub's)")
    args = parser.parse_args()
    os.environ["CROSSJAX_COMPILATION_CACHE"] = "0"  # every first call compiles, as in a first run ever

    import torch
    from sentence_transformers import CrossEncoder as StCrossEncoder

    from crossjax import CrossEncoder, data

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    _bench.print_info(
        "predict_batch_sizes",
        {"model": args.model, "setting": f"{args.pairs} STS-B train pairs, max_length 128, float32"},
    )
    pairs = [(a, b) for a, b, _ in read_pairs(args.pairs, args.data_dir)]
    jx = CrossEncoder(args.model, num_labels=1, max_length=128)
    st = StCrossEncoder(args.model, num_labels=1, max_length=128)
    real = int(data.tokenize_pairs(jx.tokenizer, [a for a, _ in pairs], [b for _, b in pairs], 128).lengths.sum())
    program = jx._predict_program(jx.compute_dtype)

    print("| batch | crossjax first s | crossjax s | ST s | crossjax / ST | shapes (rows x tokens) | real tokens |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for batch_size in args.batch_sizes:
        known = len(program.counter.shapes)
        first = time_predict(jx, pairs, batch_size)
        shapes = program.counter.shapes[known:]
        jx_times, st_times = [], []
        for _ in range(args.repeats):
            jx_times.append(time_predict(jx, pairs, batch_size))
            st_times.append(time_predict(st, pairs, batch_size))
        calls = -(-len(pairs) // batch_size)
        # every call of a batch size packs into its one planned shape here (the pairs are dealt evenly)
        computed = calls * shapes[0][1] * shapes[0][2] if len(shapes) == 1 else None
        print(
            f"| {batch_size} | {first:.2f} | {min(jx_times):.2f} | {min(st_times):.2f} | "
            f"{min(st_times) / min(jx_times):.2f}x | "
            + ", ".join(f"{rows} x {length}" for _, rows, length, _ in shapes)
            + f" | {f'{real / computed:.0%}' if computed else 'n/a'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
