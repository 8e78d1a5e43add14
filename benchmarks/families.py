"""Train and predict pairs/s of one model family, crossjax vs PyTorch (sentence-transformers), tiny and base size.

``--family modernbert|deberta-v2|bert`` picks the architecture; each size is a randomly initialised model
(PyTorch's initialisation, saved once and loaded by both libraries): ``tiny`` (hidden 32, 4 layers) and
``base`` (ModernBERT-base: hidden 768, 22 layers, intermediate 1152; DeBERTa-v3-base: hidden 768, 12 layers,
relative attention p2c+c2p, 256 position buckets; BERT-base). The tokenizer is all-MiniLM-L6-v2's WordPiece
(real subword lengths; families without token types get it without ``token_type_ids``), the data the first
``--pairs`` STS-B train pairs (synthetic sentences when ../shared/data/stsb is missing), ``max_length`` 128,
batch 16, float32, one label.

Each library fits for ``--epochs`` epochs (the first holds crossjax's compilations and is reported on its
own; steady state is epochs 2..N) and then predicts the same pairs (first call, then the best of
``--repeats``), in this one process, as ``benchmarks/train_throughput.py`` does (its timing helpers are
reused). The persistent compilation cache is off, so crossjax's first epoch compiles cold.

torch's OpenMP threads spin while they wait by default; on a shared machine with more runnable threads than
cores that is ruinous (a tiny ModernBERT forward took 1.6 s instead of 0.03 s at load average 13 on 2 cores),
so the script sets ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set (``--omp-wait-policy`` to
choose; ACTIVE is torch's default and is faster on an idle machine).

    python benchmarks/families.py --family modernbert                 # tiny and base, about 3 minutes
    python benchmarks/families.py --family deberta-v2 --sizes base --base-pairs 96
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402
import train_throughput as tt  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
FAMILIES = {
    "modernbert": dict(
        config="ModernBertConfig",
        tiny=dict(TINY, local_attention=16, global_attn_every_n_layers=3),
        base=dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152),
        ids=dict(pad_token_id=0, cls_token_id=101, bos_token_id=101, sep_token_id=102, eos_token_id=102),
        token_types=False,
    ),
    "deberta-v2": dict(
        config="DebertaV2Config",
        tiny=dict(TINY, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16),
        base=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=256,
            max_relative_positions=-1,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
        ),
        ids=dict(pad_token_id=0, type_vocab_size=0, max_position_embeddings=512, position_biased_input=False),
        token_types=False,
    ),
    "bert": dict(
        config="BertConfig",
        tiny=TINY,
        base=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        ids=dict(pad_token_id=0),
        token_types=True,
    ),
}


def build_checkpoint(family: str, size: str, directory: Path) -> Path:
    """A random ``family`` model of ``size`` (one label) and the MiniLM tokenizer, saved in ``directory``."""
    import torch
    import transformers

    spec = FAMILIES[family]
    tokenizer_kwargs = {} if spec["token_types"] else {"model_input_names": ["input_ids", "attention_mask"]}
    tokenizer = transformers.AutoTokenizer.from_pretrained(_common.default_model_dir(), **tokenizer_kwargs)
    config_class = getattr(transformers, spec["config"])
    config = config_class(vocab_size=len(tokenizer), num_labels=1, **spec[size], **spec["ids"])
    config.architectures = [config_class.__name__.replace("Config", "ForSequenceClassification")]
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def read_rows(n: int) -> list[tuple[str, str, float]]:
    """The first n STS-B train pairs, or synthetic sentence pairs of STS-B-like lengths without the data."""
    if (_common.SHARED_DATA / "stsb" / "stsb-en-train.csv").is_file():
        return tt.read_pairs(n)
    import random

    rng = random.Random(0)
    words = "a man woman dog cat is eating playing guitar running the street in on with park ball red".split()

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) + "."

    return [(sentence(), sentence(), rng.random()) for _ in range(n)]


def measure(args, family: str, size: str, pairs_count: int, epochs: int, compile_clock) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"crossjax-{family}-{size}-") as tmp:
        directory = build_checkpoint(family, size, Path(tmp))
        run_args = argparse.Namespace(
            model=str(directory),
            max_length=args.max_length,
            seed=args.seed,
            batch_size=args.batch_size,
            epochs=epochs,
            warmup_steps=2,
        )
        rows = read_rows(pairs_count)
        pairs = [(a, b) for a, b, _ in rows]
        jx = tt.fit_crossjax(run_args, rows, compile_clock)
        st = tt.fit_st(run_args, rows)
        jr, sr = tt.rates(jx, pairs_count), tt.rates(st, pairs_count)
        jx_first = tt.time_predict(jx["model"], pairs, args.batch_size)
        st_first = tt.time_predict(st["model"], pairs, args.batch_size)
        jx_best = min(tt.time_predict(jx["model"], pairs, args.batch_size) for _ in range(args.repeats))
        st_best = min(tt.time_predict(st["model"], pairs, args.batch_size) for _ in range(args.repeats))
    print(
        f"{family} {size}: {pairs_count} pairs x {epochs} epochs; crossjax compile {jx['compile_s']:.1f} s, "
        f"{jx['compilations']} train shapes {jx['shapes']}, padding efficiency {100 * jx['padding_efficiency']:.1f}%; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return {
        "fit steady": (jr["steady_pps"], sr["steady_pps"]),
        "fit all epochs": (jr["total_pps"], sr["total_pps"]),
        "predict best": (pairs_count / jx_best, pairs_count / st_best),
        "predict first": (pairs_count / jx_first, pairs_count / st_first),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="modernbert")
    parser.add_argument("--sizes", nargs="+", choices=("tiny", "base"), default=["tiny", "base"])
    parser.add_argument("--pairs", type=int, default=256, help="STS-B train pairs for the tiny model")
    parser.add_argument("--epochs", type=int, default=3, help="epochs for the tiny model (the first compiles)")
    parser.add_argument("--base-pairs", type=int, default=32, help="STS-B train pairs for the base model")
    parser.add_argument("--base-epochs", type=int, default=2, help="epochs for the base model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed predict calls after the first")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default=None)
    args = parser.parse_args()
    if min(args.epochs, args.base_epochs) < 2:
        parser.error("epochs must be >= 2: the first epoch is the compile/warm-up epoch")
    os.environ["CROSSJAX_COMPILATION_CACHE"] = "0"
    if args.omp_wait_policy or "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy or "PASSIVE"  # read when torch starts OpenMP

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    compile_clock = tt.CompileClock()
    _bench.print_info(
        "families",
        {
            "family": args.family,
            "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"],
            "setting": f"random weights, MiniLM tokenizer, STS-B train pairs, batch {args.batch_size}, "
            f"max_length {args.max_length}, float32; tiny {args.pairs} pairs x {args.epochs} epochs, "
            f"base {args.base_pairs} pairs x {args.base_epochs} epochs",
        },
    )
    results = {}
    for size in args.sizes:
        pairs, epochs = (args.pairs, args.epochs) if size == "tiny" else (args.base_pairs, args.base_epochs)
        results[size] = measure(args, args.family, size, pairs, epochs, compile_clock)

    print(f"\n| {args.family} | pairs/s | crossjax | PyTorch (sentence-transformers) | crossjax / PyTorch |")
    print("|---|---|---:|---:|---:|")
    for size, rows in results.items():
        for name, (ours, theirs) in rows.items():
            print(f"| {size} | {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
