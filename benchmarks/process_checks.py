"""What the agreement checks of a multi-process run cost each process, besides their one all-gather each.

In a run of several processes, ``CrossEncoder`` construction compares a digest of every parameter across the
processes (so replicas loaded from different weights are refused) and each ``predict`` call a digest of its pairs,
batch size and dtype (each process computes its share of every batch). This times the digests on one process:
the weights of ``--model`` and the pairs of STS-B train. A single-process run computes neither.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: data readers, default checkpoint)


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA, help="holds stsb/ (else the hub's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _bench.print_info("multi-process agreement checks", {"model": str(args.model)})

    import jax
    from flax import nnx

    from crossjax import CrossEncoder, parallel
    from crossjax.cross_encoder import _call_digest

    model = CrossEncoder(str(args.model), num_labels=1)
    params = nnx.state(model.model, nnx.Param)
    count = sum(x.size for x in jax.tree.leaves(params))
    seconds = best_seconds(lambda: parallel.local_values_digest(params), args.repeats)
    print(f"weights digest: {count / 1e6:.1f}M parameters ({count * 4 / 2**20:.0f} MiB) in {1000 * seconds:.0f} ms")
    stsb = args.data_dir / "stsb"
    rows = _common.read_stsb_csv(stsb, "train") if (stsb / "stsb-en-train.csv").is_file() else _common.hub_stsb("train")
    texts_a, texts_b = [a for a, _, _ in rows], [b for _, b, _ in rows]
    seconds = best_seconds(lambda: _call_digest(texts_a, texts_b, 32, None), args.repeats)
    print(f"predict call digest: {len(texts_a)} pairs in {1000 * seconds:.1f} ms")


if __name__ == "__main__":
    main()
