"""Compile time of ``fit``: a first fit, a second fit in the same process, and a first fit in a fresh process
that finds the persistent compilation cache filled.

Three runs, each in a fresh Python process, all with ``CROSSJAX_COMPILATION_CACHE`` set to one new, empty
directory (``--cache-dir``, default a temporary one):

1. cold: the first ``fit`` of the process with an empty cache, then a second ``fit`` of a new CrossEncoder in the
   same process with other numbers (learning rate, warm-up, weight decay): it reuses the jitted step.
2. warm: a fresh process runs the first ``fit`` again; its programs are traced again but loaded from the cache.

Each fit reports what ``fit``'s summary says: ``compilations`` (train-step programs traced in that fit),
``compile_seconds`` (wall time JAX spent tracing, lowering and compiling or loading, every program of the fit
included) and ``cache_hits`` (programs loaded from the persistent cache); plus the fit's wall time.

Model: ``--model`` (all-MiniLM-L6-v2 by default) with a new 1-label head, or ``--model tiny`` for a random
2-layer BERT (hidden 32) with MiniLM's tokenizer. Data: the first ``--pairs`` STS-B train pairs, labels score/5,
shuffled, batch ``--batch-size``, ``max_length`` 128, one epoch, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: data readers, default checkpoint)

FIELDS = ("compilations", "compile_seconds", "cache_hits")


def tiny_model(directory: Path) -> str:
    """A random 2-layer BertForSequenceClassification (1 label) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    if not (directory / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(_common.default_model_dir())
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=128,
            num_labels=1,
        )
        AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return str(directory)


def child(args) -> None:
    """One process: ``args.fits`` fits, each of a new CrossEncoder; prints one JSON line per fit."""
    from crossjax import CrossEncoder, DataLoader, InputExample

    stsb = _common.SHARED_DATA / "stsb"
    rows = _common.read_stsb_csv(stsb, "train") if (stsb / "stsb-en-train.csv").is_file() else _common.hub_stsb("train")
    examples = [InputExample(texts=[a, b], label=s) for a, b, s in rows[: args.pairs]]
    numbers = [
        {"optimizer_params": {"lr": 2e-5}, "warmup_steps": 10, "weight_decay": 0.01},
        {"optimizer_params": {"lr": 3e-5}, "warmup_steps": 3, "weight_decay": 0.1},
    ]
    for i in range(args.fits):
        model = CrossEncoder(args.model, num_labels=1, max_length=128, seed=12)
        loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size, seed=12)
        start = time.perf_counter()
        summary = model.fit(loader, epochs=1, show_progress_bar=False, **numbers[i % 2])
        seconds = time.perf_counter() - start
        print(json.dumps({"fit_seconds": seconds, **{k: summary[k] for k in FIELDS}}), flush=True)


def run_child(args, fits: int, cache_dir: str) -> list[dict]:
    cmd = [
        sys.executable, __file__, "--child", "--fits", str(fits), "--model", args.model,
        "--pairs", str(args.pairs), "--batch-size", str(args.batch_size),
    ]
    env = dict(os.environ, CROSSJAX_COMPILATION_CACHE=cache_dir, TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=_common.default_model_dir(), help="a checkpoint, or 'tiny'")
    parser.add_argument("--pairs", type=int, default=512, help="the first N STS-B train pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache-dir", default=None, help="an empty directory for the cache (default: a new one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fits", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="crossjax-compile-bench-") as tmp:
        if args.model == "tiny":
            args.model = tiny_model(Path(tmp) / "tiny")
        cache_dir = args.cache_dir or str(Path(tmp) / "xla")
        if Path(cache_dir).exists() and any(Path(cache_dir).iterdir()):
            raise SystemExit(f"--cache-dir {cache_dir} is not empty")
        _bench.print_info(
            "compile_cache",
            {
                "model": args.model,
                "setting": f"{args.pairs} STS-B train pairs, batch {args.batch_size}, max_length 128, 1 epoch, float32",
            },
        )
        first, second = run_child(args, 2, cache_dir)
        (warm,) = run_child(args, 1, cache_dir)
        files = [p for p in Path(cache_dir).rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)

    print(f"persistent cache after the runs: {len(files)} files, {size / 2**20:.1f} MiB")
    header = f"| {'fit':<52} | {'compilations':>12} | {'compile s':>9} | {'cache hits':>10} | {'fit s':>7} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name, r in (
        ("first fit, fresh process, empty cache", first),
        ("second fit, same process (other lr/warm-up/decay)", second),
        ("first fit, fresh process, filled cache", warm),
    ):
        print(
            f"| {name:<52} | {r['compilations']:>12} | {r['compile_seconds']:>9.1f} | {r['cache_hits']:>10} "
            f"| {r['fit_seconds']:>7.1f} |"
        )


if __name__ == "__main__":
    main()
