"""BM25 candidates: reading BEIR folders, BM25 top-k retrieval, and BM25 hard-negative mining, timed.

Prints, per BEIR folder under ``--data-dir`` (``msmarco``, ``dbpedia-entity``): the time to read it, the time to
index it and retrieve the top ``--rerank-k`` of every judged query, and BM25's NDCG@10 / MRR@10 / MAP (the
``base_*`` metrics of ``CrossEncoderBEIREvaluator``). Then mines ``--num-negatives`` BM25 hard negatives for
every positive (question, answer) pair of TrecQA train against all of its answers, and prints rows per second.
No model is involved.

Usage:
    python benchmarks/bm25_candidates.py
    python benchmarks/bm25_candidates.py --data-dir ../shared/data --rerank-k 100 --num-negatives 5
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

from crossjax.evaluation import CrossEncoderBEIREvaluator  # noqa: E402
from crossjax.util import mine_hard_negatives  # noqa: E402


class ConstantScores:
    """A "model" that scores every pair alike: only the BM25 (base) metrics are meaningful."""

    def predict(self, pairs, **kwargs):
        return np.zeros(len(pairs), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(_bench.REPO.parent / "shared" / "data"))
    parser.add_argument("--rerank-k", type=int, default=100)
    parser.add_argument("--num-negatives", type=int, default=5)
    args = parser.parse_args()
    _bench.print_info("BM25 candidates", {"data": args.data_dir})
    data = Path(args.data_dir)

    for folder in ("msmarco", "dbpedia-entity"):
        started = time.perf_counter()
        evaluator = CrossEncoderBEIREvaluator(data / folder, rerank_k=args.rerank_k, write_csv=False)
        total = time.perf_counter() - started
        loaded = evaluator.folders[0]
        metrics = evaluator(ConstantScores())
        prefix = f"{loaded.name}_R{args.rerank_k}_"
        print(
            f"{loaded.name}: {len(loaded.corpus_texts):,} docs, {len(evaluator.evaluators[0].samples)} judged queries; "
            f"read {loaded.load_seconds:.2f} s, BM25 index + top-{args.rerank_k} {total - loaded.load_seconds:.2f} s; "
            f"BM25 NDCG@10 {metrics[prefix + 'base_ndcg@10']:.4f}, MRR@10 {metrics[prefix + 'base_mrr@10']:.4f}, "
            f"MAP {metrics[prefix + 'base_map']:.4f}"
        )

    with open(data / "trecqa" / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pairs = {"question": [], "answer": []}
    for row in rows:
        if row["label"] == "1":
            pairs["question"].append(row["qtext"])
            pairs["answer"].append(row["atext"])
    corpus = [row["atext"] for row in rows]
    started = time.perf_counter()
    mined = mine_hard_negatives(pairs, corpus=corpus, num_negatives=args.num_negatives, verbose=False)
    seconds = time.perf_counter() - started
    print(
        f"trecqa train: {len(pairs['question'])} positive pairs, corpus {len(set(corpus)):,} answers -> "
        f"{len(mined):,} triplets in {seconds:.2f} s ({len(pairs['question']) / seconds:,.0f} pairs/s)"
    )


if __name__ == "__main__":
    main()
