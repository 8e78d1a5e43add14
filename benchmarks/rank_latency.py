"""Reranking latency: ``rank(query, candidates)`` one query after another, as a search service calls a reranker.

For each of the first ``--queries`` judged queries of a BEIR folder (``--data-dir``/``--folder``, default
msmarco), BM25 retrieves the top ``--k`` documents and the query keeps a random number of them between
``--min-k`` and ``--k`` (a retriever with a score cut-off: each call has its own count and lengths). crossjax's
and sentence-transformers' ``CrossEncoder`` (the same checkpoint, ``--model``, default MiniLM with a new
1-label head) rank the same candidates in the same process, alternating query by query, at ``--batch-size``.

Reported per library: the model's load time (constructor, weights included), the first call, the median and
90th percentile of the later calls, their pairs/s, the whole session (load + every call), and crossjax's
compiled predict programs. crossjax starts cold (persistent compilation cache off unless ``--cache-dir``), as a
freshly started service would; the first call compiles, later calls compile only shapes no earlier call could
serve (see ``crossjax.packing.plan_call`` / ``reuse_compiled_shapes``). Both libraries' scores are compared.

Usage:
    python benchmarks/rank_latency.py
    python benchmarks/rank_latency.py --queries 40 --k 100 --min-k 20 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import _common  # noqa: E402


def candidate_lists(folder: Path, queries: int, k: int, min_k: int, seed: int) -> list[tuple[str, list[str]]]:
    from crossjax.evaluation.beir import bm25_reranking_samples, load_beir_folder

    samples = bm25_reranking_samples(load_beir_folder(folder), rerank_k=k, max_queries=queries)
    rng = np.random.default_rng(seed)
    return [(s["query"], list(s["documents"])[: int(rng.integers(min_k, k + 1))]) for s in samples]


def run_calls(rank, calls) -> tuple[list[float], list[np.ndarray]]:
    seconds, scores = [], []
    for query, documents in calls:
        start = time.perf_counter()
        ranked = rank(query, documents)
        seconds.append(time.perf_counter() - start)
        order = np.zeros(len(documents), dtype=np.float64)
        for r in ranked:
            order[r["corpus_id"]] = r["score"]
        scores.append(order)
    return seconds, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA)
    parser.add_argument("--folder", default="msmarco")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates retrieved a query")
    parser.add_argument("--min-k", type=int, default=None, help="fewest candidates a query keeps (default k/2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--cache-dir", default=None, help="crossjax's persistent compilation cache (default: off)")
    args = parser.parse_args()
    min_k = args.k // 2 if args.min_k is None else args.min_k
    if not 1 <= min_k <= args.k:
        parser.error("--min-k must be between 1 and --k")
    os.environ["CROSSJAX_COMPILATION_CACHE"] = args.cache_dir or "0"

    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from crossjax import CrossEncoder

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    calls = candidate_lists(args.data_dir / args.folder, args.queries, args.k, min_k, args.seed)
    _bench.print_info(
        "rank_latency",
        {
            "model": args.model,
            "setting": f"{len(calls)} {args.folder} queries, BM25 top {min_k}..{args.k} each "
            f"({sum(len(d) for _, d in calls):,} pairs), batch {args.batch_size}, float32",
        },
    )

    start = time.perf_counter()
    jx = CrossEncoder(args.model, num_labels=1)
    jx_load = time.perf_counter() - start
    start = time.perf_counter()
    st = STCrossEncoder(args.model, num_labels=1, device="cpu")
    st_load = time.perf_counter() - start
    # The same head: sentence-transformers' fresh head gets crossjax's weights.
    state = jx.model.hf_state_dict()
    with torch.no_grad():
        for name, tensor in st.model.state_dict().items():
            if name.startswith("classifier."):
                tensor.copy_(torch.from_numpy(state[name]))

    times: dict[str, list[float]] = {"crossjax": [], "sentence-transformers": []}
    scores: dict[str, list[np.ndarray]] = {"crossjax": [], "sentence-transformers": []}
    for call in calls:  # alternating, query by query
        for name, model in (("crossjax", jx), ("sentence-transformers", st)):
            seconds, got = run_calls(lambda q, d, m=model: m.rank(q, d, batch_size=args.batch_size), [call])
            times[name] += seconds
            scores[name] += got
    difference = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(scores["crossjax"], scores["sentence-transformers"], strict=True)
    )

    later_pairs = sum(len(d) for _, d in calls[1:])
    print("\n| library | load s | first call ms | later calls: median ms | p90 ms | pairs/s | session s | compiles |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, load in (("crossjax", jx_load), ("sentence-transformers", st_load)):
        t = np.array(times[name]) * 1e3
        compiles = str(jx.compilations["predict"]) if name == "crossjax" else "-"
        print(
            f"| {name} | {load:.2f} | {t[0]:.0f} | {np.median(t[1:]):.0f} | {np.percentile(t[1:], 90):.0f} | "
            f"{later_pairs / (t[1:].sum() / 1e3):.0f} | {load + t.sum() / 1e3:.1f} | {compiles} |"
        )
    jx_t, st_t = np.array(times["crossjax"]), np.array(times["sentence-transformers"])
    print(
        f"\ncrossjax / sentence-transformers: later calls {st_t[1:].sum() / jx_t[1:].sum():.2f}x, "
        f"whole session {(st_load + st_t.sum()) / (jx_load + jx_t.sum()):.2f}x; "
        f"largest score difference {difference:.2e}"
    )


if __name__ == "__main__":
    main()
