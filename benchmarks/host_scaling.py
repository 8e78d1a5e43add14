"""Host-side cost of big inputs: the packer, ``predict`` with a large ``batch_size``, and the trainer's set-up.

With a tiny random BERT (2 layers, hidden 32) the model's own compute is small, so these figures are the
host's work: tokenizing, planning and packing. Each stage is timed in CPU seconds (``time.process_time``,
less sensitive to other load than wall time) in this process, one after another:

* ``packing._fits`` (first-fit-decreasing) on random pair lengths, against the one-by-one first fit it must
  equal (checked here too);
* ``CrossEncoder.predict`` of ``n`` STS-B-like pairs with ``batch_size=n`` (one call plans all of them);
* ``CrossEncoderTrainer`` on a ``datasets.Dataset`` of ``n`` rows: from ``train()`` to the end of the first
  step (``max_steps=1``).

Usage:
    python benchmarks/host_scaling.py [--sizes 4096 16384 32768] [--trainer-rows 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import print_info  # noqa: E402

WORDS = "a man woman dog plays eats runs the on in guitar street park red small quickly music table".split()


def one_by_one_first_fit(lengths: np.ndarray, rows: int, row_length: int) -> list[list[int]] | None:
    """First-fit-decreasing as defined: longest first (ties in input order), each into the first row with room."""
    layout: list[list[int]] = [[] for _ in range(rows)]
    free = [row_length] * rows
    for position in np.argsort(-lengths, kind="stable"):
        n = int(lengths[position])
        row = next((r for r in range(rows) if free[r] >= n), None)
        if row is None:
            return None
        layout[row].append(int(position))
        free[row] -= n
    return layout


def texts(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(k))) for k in rng.integers(low, high, size=n)]


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    """``fn``'s result and the CPU seconds it took."""
    started = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--trainer-rows", type=int, default=100_000)
    args = parser.parse_args()
    print_info("host-side scaling (tiny random BERT)")

    from crossjax import packing

    rng = np.random.default_rng(0)
    print("\n## packing._fits: first-fit-decreasing, rows of 512 tokens (CPU s)")
    print(f"{'pairs':>8} {'rows':>6} {'crossjax':>9} {'one by one':>11}  same layout")
    for n in args.sizes:
        lengths = rng.integers(8, 120, size=n)
        rows = int(lengths.sum()) // 480 + 1
        ours, fast = timed(packing._fits, lengths, rows, 512)
        theirs, slow = timed(one_by_one_first_fit, lengths, rows, 512)
        print(f"{n:>8} {rows:>6} {fast:>9.3f} {slow:>11.3f}  {ours == theirs}", flush=True)

    import torch
    import transformers

    from crossjax import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tok"
        vocab = sorted({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS})
        tokenizer_dir.mkdir()
        (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = transformers.BertTokenizerFast(str(tokenizer_dir / "vocab.txt"))
        config = transformers.BertConfig(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_labels=1,
        )  # fmt: skip
        torch.manual_seed(0)
        model_dir = Path(tmp) / "tiny"
        transformers.BertForSequenceClassification(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        model = CrossEncoder(str(model_dir))

        print("\n## CrossEncoder.predict(n pairs, batch_size=n) (CPU s, compiles included)")
        for n in args.sizes:
            pairs = list(zip(texts(rng, n, 3, 12), texts(rng, n, 3, 25), strict=True))
            _, seconds = timed(model.predict, pairs, batch_size=n)
            print(f"{n:>8} pairs: {seconds:.2f}", flush=True)

        from datasets import Dataset

        n = args.trainer_rows
        data = Dataset.from_dict(
            {"q": texts(rng, n, 3, 12), "d": texts(rng, n, 3, 25), "label": rng.integers(0, 2, n).astype(float)}
        )
        trainer_args = CrossEncoderTrainingArguments(
            str(Path(tmp) / "run"), max_steps=1, per_device_train_batch_size=16, save_strategy="no",
            disable_tqdm=True, logging_strategy="no",
        )  # fmt: skip
        trainer = CrossEncoderTrainer(model=model, args=trainer_args, train_dataset=data)
        _, seconds = timed(trainer.train)
        print(f"\n## CrossEncoderTrainer: {n} rows, train() to the end of step 1: {seconds:.2f} CPU s", flush=True)


if __name__ == "__main__":
    main()
