"""Padding efficiency (real tokens / computed tokens) of crossjax's packed batches on real data sets.

For STS-B train, SNLI dev (e-SNLI layout) and TrecQA train from ``../shared/data`` (or ``--data-dir``), tokenized
with the MiniLM tokenizer at ``max_length`` 128, one epoch of plain random batches (what ``fit`` trains on) is
packed with ``crossjax.packing`` at several batch sizes and shape budgets (``max_shapes``). For comparison:
padding each random batch to its own longest pair (sentence-transformers' collation), and the *ceiling*: the
best efficiency any packer could reach on the same batches with ``max_shapes`` static token capacities (each
step's token count rounded up to the best capacities, with no fragmentation at all). A fixed number of random
pairs varies in token count from step to step, so static shapes have a cost that no packer removes; the
opt-in token budget (pairs per step vary) removes it. Needs no model weights.

Usage:
    python benchmarks/packing_efficiency.py
    python benchmarks/packing_efficiency.py --batch-sizes 16 64 --max-shapes 1 2 3 --groups 8
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import _common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def read_sets(data_dir: Path) -> dict[str, tuple[list[str], list[str]]]:
    with open(data_dir / "stsb" / "stsb-en-train.csv", newline="", encoding="utf-8") as f:
        stsb = list(csv.reader(f))
    esnli = data_dir / "snli" / "esnli"
    with open(data_dir / "trecqa" / "train.csv", newline="", encoding="utf-8") as f:
        trec = list(csv.DictReader(f))
    return {
        "STS-B train": ([r[0] for r in stsb], [r[1] for r in stsb]),
        "SNLI dev": ((esnli / "s1.dev").read_text().splitlines(), (esnli / "s2.dev").read_text().splitlines()),
        "TrecQA train": ([r["qtext"] for r in trec], [r["atext"] for r in trec]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--max-shapes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--groups", type=int, default=1, help="data shards x accumulation steps")
    parser.add_argument("--hidden-size", type=int, default=384, help="the model width attention is weighed by")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--max-tokens", type=int, nargs="*", default=[2048, 8192], help="token budgets per step (fit's opt-in)"
    )
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from crossjax import data, packing

    _bench.print_info("packing_efficiency")
    tokenizer = AutoTokenizer.from_pretrained(_common.default_model_dir())
    print(
        "\n| data set | pairs | mean tokens | batch | max_shapes | shapes (G, R, T) | packed | ceiling | "
        "padded per batch |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for name, (a, b) in read_sets(args.data_dir).items():
        tokenized = data.tokenize_pairs(tokenizer, a, b, args.max_length)
        lengths = tokenized.lengths
        for batch_size in args.batch_sizes:
            steps = data.plan_batches(lengths, batch_size, True, 0, 0, False, group_by_length=False)
            padded = sum(lengths[s].sum() for s in steps) / sum(len(s) * lengths[s].max() for s in steps)
            # What any packer could reach with these batches and `max_shapes` static token capacities: each
            # step's groups need at least their largest token count, rounded up to the best capacities.
            needs = [
                args.groups * max(int(lengths[g].sum()) for g in packing.deal_into_groups(s, lengths, args.groups))
                for s in steps
            ]
            for max_shapes in args.max_shapes:
                plan = packing.plan_packing(
                    steps, lengths, args.groups, batch_size // args.groups, args.hidden_size, max_shapes
                )
                batches = [packing.pack(tokenized, s, None, plan, 0) for s in steps]
                efficiency = sum(x.real_tokens for x in batches) / sum(x.computed_tokens for x in batches)
                shapes = sorted({x.input_ids.shape for x in batches})
                capacities = packing.choose_row_counts(needs, max_shapes)
                ceiling = int(lengths.sum()) / sum(next(c for c in capacities if c >= n) for n in needs)
                print(
                    f"| {name} | {len(lengths)} | {lengths.mean():.1f} | {batch_size} | {max_shapes} | "
                    f"{', '.join(map(str, shapes))} | {100 * efficiency:.1f}% | {100 * ceiling:.1f}% | "
                    f"{100 * padded:.1f}% |",
                    flush=True,
                )
        # Token-budget steps (fit(max_tokens_per_step=...)): one shape, pairs per step vary.
        order = np.random.default_rng((0, 0)).permutation(len(lengths))
        for budget in args.max_tokens:
            rows, row_length = packing.token_budget_shape(lengths, args.groups, budget)
            steps = packing.token_budget_steps(order, lengths, args.groups, rows, row_length)
            efficiency = int(lengths.sum()) / (len(steps) * args.groups * rows * row_length)
            pairs = [sum(len(g) for g in step) for step in steps]
            print(
                f"| {name} | {len(lengths)} | {lengths.mean():.1f} | {budget} tokens ({min(pairs)}-{max(pairs)} "
                f"pairs) | 1 | ({args.groups}, {rows}, {row_length}) | {100 * efficiency:.1f}% | | |",
                flush=True,
            )


if __name__ == "__main__":
    main()
