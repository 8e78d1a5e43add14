"""Training quality: fine-tune all-MiniLM-L6-v2 on STS-B with crossjax and with sentence-transformers' legacy
``old_fit`` under the same settings, and compare dev Spearman.

Settings (both libraries): one label, BCE-with-logits on score/5, both orders of every train pair (as
sentence-transformers' training_stsbenchmark.py), batch 16, lr 2e-5, AdamW with weight decay 0.01, warm-up
10% of the steps with WarmupLinear, gradient clipping 1.0, max_length 128, float32, a fixed seed (head
initialisation, shuffling, dropout; the two libraries' random streams differ, so only the distribution of
the results can agree, not the numbers). Both models are scored with crossjax's ``CECorrelationEvaluator``
(it works with any object that has ``predict``), on the full STS-B dev split.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: data readers, default checkpoint)


def load_data(args):
    stsb = _common.SHARED_DATA / "stsb"
    if (stsb / "stsb-en-train.csv").is_file():
        train, dev = (_common.read_stsb_csv(stsb, split) for split in ("train", "dev"))
    else:
        train, dev = (_common.hub_stsb(split) for split in ("train", "dev"))
    train = _common.subsample(train, args.max_train_samples, args.seed)
    return train, dev


def run_crossjax(args, train_rows, evaluator, warmup_steps: int) -> tuple[float, float]:
    from crossjax import CrossEncoder, DataLoader, InputExample

    examples = [InputExample(texts=list(t), label=lab) for t, lab in _pairs(train_rows, args.both_orders)]
    model = CrossEncoder(
        args.model, num_labels=1, max_length=args.max_length, seed=args.seed, scan_layers=args.scan_layers == "scan"
    )
    loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size, seed=args.seed)
    start = time.perf_counter()
    model.fit(
        loader,
        epochs=args.epochs,
        scheduler="WarmupLinear",
        warmup_steps=warmup_steps,
        optimizer_params={"lr": args.lr},
        show_progress_bar=args.progress,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    return evaluator(model)[evaluator.primary_metric], seconds


def run_st(args, train_rows, evaluator, warmup_steps: int) -> tuple[float, float]:
    import torch
    from sentence_transformers import CrossEncoder, InputExample
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    examples = [InputExample(texts=list(t), label=lab) for t, lab in _pairs(train_rows, args.both_orders)]
    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length)
    loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size)
    start = time.perf_counter()
    model.old_fit(
        loader,
        epochs=args.epochs,
        scheduler="WarmupLinear",
        warmup_steps=warmup_steps,
        optimizer_params={"lr": args.lr},
        show_progress_bar=args.progress,
    )
    seconds = time.perf_counter() - start
    return evaluator(model)[evaluator.primary_metric], seconds


def _pairs(rows, both_orders: bool):
    for a, b, label in rows:
        yield (a, b), label
        if both_orders:
            yield (b, a), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=None, help="random subset of train pairs")
    parser.add_argument("--one-order", dest="both_orders", action="store_false", help="train on (a, b) only")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--scan-layers", choices=["scan", "unrolled"], default="scan", help="crossjax's layout")
    parser.add_argument("--only", choices=("crossjax", "st"), default=None, help="run one library only")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.add_argument("--torch-threads", type=int, default=None, help="default: the available CPU cores")
    args = parser.parse_args()

    import torch

    from crossjax.evaluation import CECorrelationEvaluator

    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    train_rows, dev_rows = load_data(args)
    dev_pairs = [[a, b] for a, b, _ in dev_rows]
    evaluator = CECorrelationEvaluator(dev_pairs, [s for _, _, s in dev_rows], name="sts-dev", show_progress_bar=False)
    n_examples = len(train_rows) * (2 if args.both_orders else 1)
    steps = math.ceil(n_examples / args.batch_size) * args.epochs
    warmup_steps = math.ceil(steps * 0.1)
    _bench.print_info("stsb_quality", {"model": args.model})
    print(
        f"{n_examples} train examples ({len(train_rows)} pairs{', both orders' if args.both_orders else ''}), "
        f"{len(dev_rows)} dev pairs, {steps} steps, warm-up {warmup_steps}, batch {args.batch_size}, lr {args.lr}, "
        f"seed {args.seed}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    results = {}
    runners = {"crossjax": run_crossjax, "sentence-transformers": run_st}
    for name, runner in runners.items():
        if args.only is not None and not name.startswith(args.only):
            continue
        spearman, seconds = runner(args, train_rows, evaluator, warmup_steps)
        results[name] = spearman
        print(f"{name:>22}: dev Spearman {spearman:.4f}  (fit {seconds:.0f} s)", flush=True)
    if len(results) == 2:
        diff = results["crossjax"] - results["sentence-transformers"]
        print(f"{'difference':>22}: {diff:+.4f}")


if __name__ == "__main__":
    main()
