"""Reranker training throughput: crossjax's CrossEncoderTrainer vs sentence-transformers' CrossEncoderTrainer.

Same model (all-MiniLM-L6-v2 with a fresh one-label head, or ``--model DIR``), same data (TrecQA train
questions from ../shared/data/trecqa), same loss settings and batch sizes, float32, in this one process.
crossjax runs on JAX's default backend; sentence-transformers on ``--torch-device`` (CUDA where torch sees
a GPU, else the CPU).

* ``lambda``: LambdaLoss (NDCGLoss2++) on (question, [up to --docs candidates], [labels]) lists, --queries
  lists a step.
* ``mnrl``: MultipleNegativesRankingLoss (``num_negatives=None``: every other row's documents are negatives)
  on (question, positive answer, a negative candidate) triplets, --queries rows a step.

Each library trains ``--steps`` steps twice in a row (fresh models): the first run is what a user's first
``train()`` costs (crossjax compiles there; the persistent cache is off unless ``--cache-dir``), the second is
steady state (crossjax reuses its compiled step). Reported: scored pairs per second of each run and the ratio.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import _common  # noqa: E402


def trecqa_lists(data_dir: Path, docs: int) -> list[tuple[str, list[str], list[float]]]:
    """(question, candidates, labels) lists of TrecQA train, cut into chunks of ``docs`` candidates."""
    by_question: dict[str, list[tuple[str, float]]] = {}
    with open(data_dir / "trecqa" / "train.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_question.setdefault(row["qtext"], []).append((row["atext"], float(row["label"])))
    lists = []
    for question, candidates in by_question.items():
        for i in range(0, len(candidates), docs):
            chunk = candidates[i : i + docs]
            if any(label > 0 for _, label in chunk):
                lists.append((question, [c for c, _ in chunk], [label for _, label in chunk]))
    return lists


def datasets_for(kind: str, lists, rows: int) -> dict[str, list]:
    if kind == "lambda":
        chosen = lists[:rows]
        return {
            "query": [q for q, _, _ in chosen],
            "docs": [d for _, d, _ in chosen],
            "labels": [labels for *_, labels in chosen],
        }
    triplets = []
    for question, docs, labels in lists:
        positives = [d for d, label in zip(docs, labels, strict=True) if label > 0]
        negatives = [d for d, label in zip(docs, labels, strict=True) if label == 0]
        if positives and negatives:
            triplets.append((question, positives[0], negatives[0]))
    triplets = triplets[:rows]
    return {
        "query": [t[0] for t in triplets],
        "positive": [t[1] for t in triplets],
        "negative": [t[2] for t in triplets],
    }


def pairs_scored(kind: str, dataset: dict[str, list], batch: int, steps: int) -> int:
    """Pairs one run scores: every candidate of each list, or for MNRL each row x every row's two texts."""
    n = len(dataset["query"])
    total = 0
    for step in range(steps):
        rows = [(step * batch + i) % n for i in range(batch)]
        if kind == "lambda":
            total += sum(len(dataset["docs"][r]) for r in rows)
        else:
            total += len(rows) * (1 + 1 + 2 * (len(rows) - 1))  # positive, own negative, the others' two
    return total


def run_crossjax(model_dir: str, kind: str, dataset, args) -> float:
    from crossjax import CrossEncoder, losses
    from crossjax.trainer import CrossEncoderTrainer
    from crossjax.training_args import CrossEncoderTrainingArguments

    model = CrossEncoder(
        model_dir, num_labels=1, max_length=args.max_length, scan_layers=args.scan_layers == "scan"
    )
    loss = (
        losses.LambdaLoss(model)
        if kind == "lambda"
        else losses.MultipleNegativesRankingLoss(model, num_negatives=None)
    )
    training_args = CrossEncoderTrainingArguments(
        "/tmp/crossjax-bench-reranker", per_device_train_batch_size=args.queries, max_steps=args.steps,
        save_strategy="no", disable_tqdm=True, learning_rate=2e-5, seed=0,
    )  # fmt: skip
    start = time.perf_counter()
    CrossEncoderTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss).train()
    return time.perf_counter() - start


def run_sentence_transformers(model_dir: str, kind: str, dataset, args) -> float:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )

    model = CrossEncoder(model_dir, num_labels=1, max_length=args.max_length, device=args.torch_device)
    loss = (
        losses.LambdaLoss(model)
        if kind == "lambda"
        else losses.MultipleNegativesRankingLoss(model, num_negatives=None)
    )
    training_args = CrossEncoderTrainingArguments(
        "/tmp/st-bench-reranker", per_device_train_batch_size=args.queries, max_steps=args.steps,
        save_strategy="no", report_to="none", disable_tqdm=True, learning_rate=2e-5, seed=0,
        use_cpu=args.torch_device == "cpu",
    )  # fmt: skip
    trainer = CrossEncoderTrainer(model=model, args=training_args, train_dataset=Dataset.from_dict(dataset), loss=loss)
    start = time.perf_counter()
    trainer.train()
    if args.torch_device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", choices=["lambda", "mnrl"], nargs="+", default=["lambda", "mnrl"])
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--queries", type=int, default=8, help="rows (lists or triplets) per step")
    parser.add_argument("--docs", type=int, default=8, help="candidates per list (LambdaLoss)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--cache-dir", default=None, help="crossjax's persistent compilation cache (default: off)")
    parser.add_argument(
        "--scan-layers", choices=["scan", "unrolled"], default="scan", help="crossjax's layer layout"
    )
    parser.add_argument("--torch-device", default=None, help="sentence-transformers' device (default: cuda if any)")
    args = parser.parse_args()
    if args.torch_device is None:
        import torch

        args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ["CROSSJAX_COMPILATION_CACHE"] = args.cache_dir or "0"
    _bench.print_info(
        "reranker training throughput",
        {"steps": str(args.steps), "rows a step": str(args.queries), "model": args.model, "ST on": args.torch_device},
    )
    lists = trecqa_lists(args.data_dir, args.docs)
    for kind in args.loss:
        dataset = datasets_for(kind, lists, args.queries * args.steps)
        pairs = pairs_scored(kind, dataset, args.queries, args.steps)
        times = {}
        for name, run in (("crossjax", run_crossjax), ("sentence-transformers", run_sentence_transformers)):
            times[name] = [run(args.model, kind, dataset, args) for _ in range(2)]
        print(f"\n## {kind}: {pairs} pairs scored in {args.steps} steps")
        print(f"{'':>22} {'first run pairs/s':>18} {'second run pairs/s':>19}")
        for name, (first, second) in times.items():
            print(f"{name:>22} {pairs / first:>18.1f} {pairs / second:>19.1f}")
        (cf, cs), (sf, ss) = times["crossjax"], times["sentence-transformers"]
        print(f"{'crossjax / ST':>22} {sf / cf:>17.2f}x {ss / cs:>18.2f}x")
        print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
