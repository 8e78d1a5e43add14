"""Tokenizing pairs of two long texts: crossjax's ``tokenize_pairs`` against the tokenizer's own pair call.

A fast tokenizer's ``longest_first`` truncation builds every overflow window of both texts of a pair and keeps
their product (huggingface/tokenizers#2035), so a pair of two long documents costs seconds and gigabytes, and a
batch of them is killed for memory; sentence-transformers' ``predict`` makes that call. crossjax first cuts each
text of such a pair to a part holding the tokens the truncation can keep. Each side runs in a fresh process
(its peak RSS is its own); the ids must be equal.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: data readers, default checkpoint)


def texts(words: int, pairs: int, data_dir: Path) -> tuple[list[str], list[str]]:
    """Pairs of two documents of ``words`` words each, made of STS-B sentences (fixed order)."""
    rows = _common.read_stsb_csv(data_dir / "stsb", "train")
    sentences = [s for row in rows for s in row[:2]]
    out, position = [], 0
    for _ in range(2 * pairs):
        document: list[str] = []
        while len(document) < words:
            document += sentences[position % len(sentences)].split()
            position += 1
        out.append(" ".join(document[:words]))
    return out[0::2], out[1::2]


def run_one(side: str, model: str, words: int, pairs: int, max_length: int, data_dir: Path) -> dict:
    from transformers import AutoTokenizer

    from crossjax.data import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(model)
    a, b = texts(words, pairs, data_dir)
    started = time.perf_counter()
    if side == "crossjax":
        tokenized = tokenize_pairs(tokenizer, a, b, max_length)
        ids = [tokenized.input_ids[i].tolist() for i in range(pairs)]
    else:  # the call sentence-transformers' CrossEncoder makes (padding aside)
        ids = tokenizer(a, b, truncation=True, max_length=max_length)["input_ids"]
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "ids": ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--data-dir", type=Path, default=_common.SHARED_DATA)
    parser.add_argument("--words", type=int, nargs="+", default=[2000, 8000, 20000])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--one", choices=["crossjax", "tokenizer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        words = args.words[0]
        print(json.dumps(run_one(args.one, str(args.model), words, args.pairs, args.max_length, args.data_dir)))
        return
    _bench.print_info("long pairs", {"pairs": str(args.pairs), "max_length": str(args.max_length)})
    header = ("words per text", "tokenizer s", "peak MB", "crossjax s", "peak MB")
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, (15, 11, 8, 10, 8), strict=True)) + " | ids equal")
    for words in args.words:
        results = {}
        for side in ("tokenizer", "crossjax"):
            command = [sys.executable, __file__, "--one", side, "--model", str(args.model), "--data-dir",
                       str(args.data_dir), "--words", str(words), "--pairs", str(args.pairs), "--max-length",
                       str(args.max_length)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            results[side] = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else None
        theirs, ours = results["tokenizer"], results["crossjax"]
        if theirs is None or ours is None:
            print(f"{words:>15} | {'killed' if theirs is None else theirs['seconds']} | crossjax: {ours is not None}")
            continue
        print(
            f"{words:>15} | {theirs['seconds']:>11.2f} | {theirs['peak_rss_mb']:>8.0f} | {ours['seconds']:>10.2f} | "
            f"{ours['peak_rss_mb']:>8.0f} | {theirs['ids'] == ours['ids']}"
        )


if __name__ == "__main__":
    main()
