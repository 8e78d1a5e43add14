"""Peak memory of MultipleNegativesRankingLoss vs CachedMultipleNegativesRankingLoss (gradient caching).

One training step of MiniLM on ``--rows`` TrecQA (question, positive, negative) triplets with
``num_negatives=None``: every question is scored against every row's two candidates, ``rows * 2 * rows``
pairs in one step. The plain loss runs them in one forward and backward pass; the cached loss splits the step
into chunks of whole questions of about ``--mini-batch-size`` pairs (exactly the same loss and update). Each
variant runs in a fresh process; reported: its peak resident memory (``ru_maxrss``), wall time and the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import _common  # noqa: E402
from reranker_training import datasets_for, trecqa_lists  # noqa: E402


def child(args: argparse.Namespace) -> None:
    from crossjax import CrossEncoder, losses
    from crossjax.trainer import CrossEncoderTrainer
    from crossjax.training_args import CrossEncoderTrainingArguments

    dataset = datasets_for("mnrl", trecqa_lists(args.data_dir, 8), args.rows)
    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length)
    if args.variant == "cached":
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, num_negatives=None, mini_batch_size=args.mini_batch_size
        )
    else:
        loss = losses.MultipleNegativesRankingLoss(model, num_negatives=None)
    training_args = CrossEncoderTrainingArguments(
        f"/tmp/crossjax-bench-cached-{args.variant}", per_device_train_batch_size=args.rows, max_steps=1,
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    start = time.perf_counter()
    output = CrossEncoderTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss).train()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "peak_mib": peak_kib / 1024,
                "seconds": seconds,
                "loss": output.training_loss,
                "chunks": output.metrics["loss_chunks"],
                "pairs": len(dataset["query"]) * 2 * args.rows,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--mini-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--variant", choices=["plain", "cached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args)
    _bench.print_info("CachedMultipleNegativesRankingLoss: peak memory of one step", {"rows": str(args.rows)})
    env = {**os.environ, "CROSSJAX_COMPILATION_CACHE": "0"}
    print(f"{'variant':>8} {'chunks':>7} {'pairs':>6} {'peak RSS MiB':>13} {'seconds':>8} {'loss':>10}")
    for variant in ("plain", "cached"):
        command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        row = f"{variant:>8} {r['chunks']:>7} {r['pairs']:>6} {r['peak_mib']:>13.0f} {r['seconds']:>8.1f}"
        print(f"{row} {r['loss']:>10.6f}")


if __name__ == "__main__":
    main()
