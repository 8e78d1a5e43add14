"""What dropout costs in a packed train step: threefry (``jax.random.bernoulli``) against crossjax's
counter-hash mask (``crossjax.models.layers.dropout_keep_mask``), and a whole MiniLM train step with dropout on
and off.

A packed row of ``T`` tokens has ``heads x T x T`` attention probabilities, and dropout draws one random number
for each (the off-diagonal blocks of other pairs included), so on a CPU the mask can cost more than the layer's
matmuls. Part 1 times one attention-probability mask at a packed shape (rows x heads x T x T) with each
generator, and torch's ``Dropout`` on the same shape for scale. Part 2 times the step ``fit`` compiles
(``train_step.build_fit_step``: AdamW, clipping, BCE) with dropout 0.1 and 0.0.

Usage:
    python benchmarks/dropout_cost.py                      # MiniLM, 4 rows x 176 tokens (fit's batch-16 shape)
    python benchmarks/dropout_cost.py --rows 14 --tokens 192 --layouts scan unrolled
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import train_step  # noqa: E402


def best_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` (which blocks) over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def mask_costs(shape: tuple[int, ...], rate: float, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    from crossjax.models.layers import dropout_keep_mask

    x = jnp.ones(shape, jnp.float32)
    key = jax.random.key(0)
    threefry = jax.jit(lambda k, x: jnp.where(jax.random.bernoulli(k, 1.0 - rate, x.shape), x / (1 - rate), 0.0))
    hashed = jax.jit(lambda k, x: jnp.where(dropout_keep_mask(k, x.shape, rate), x / (1 - rate), 0.0))
    out = {
        "jax.random.bernoulli (threefry)": best_ms(lambda: threefry(key, x).block_until_ready(), repeats),
        "crossjax dropout_keep_mask": best_ms(lambda: hashed(key, x).block_until_ready(), repeats),
    }
    try:
        import torch

        dropout = torch.nn.Dropout(rate)
        t = torch.ones(shape)
        out["torch.nn.Dropout"] = best_ms(lambda: dropout(t), repeats)
    except ImportError:
        pass
    return out


def step_ms(model: str, rows: int, tokens: int, dropout: float, scan: bool, repeats: int) -> float:
    import jax

    original = train_step.bert_config

    def config(name: str, seq: int):
        c = original(name, seq)
        c.hidden_dropout_prob = c.attention_probs_dropout_prob = dropout
        return c

    train_step.bert_config = config
    try:
        program, state, batch, healthy, hparams, _, plan = train_step.build_fit_step(
            model, "float32", rows, tokens, scan_layers=scan
        )
    finally:
        train_step.bert_config = original
    gradients = train_step.gradient_buffer(state, plan)
    compiled = program.fn.lower(state, batch, healthy, hparams, gradients).compile()
    holder = {"state": state, "finite": healthy, "gradients": gradients}

    def run() -> None:
        holder["state"], metrics, holder["gradients"] = compiled(
            holder["state"], batch, holder["finite"], hparams, holder["gradients"]
        )
        holder["finite"] = metrics["finite"]
        jax.block_until_ready(metrics)

    return best_ms(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", choices=list(train_step.MODELS))
    parser.add_argument("--rows", type=int, default=4, help="packed rows of the step")
    parser.add_argument("--tokens", type=int, default=176, help="tokens a row")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layouts", nargs="+", default=["scan"], choices=["scan", "unrolled"])
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    _bench.print_info("dropout cost in a packed train step")
    heads = train_step.bert_config(args.model, args.tokens).num_attention_heads
    shape = (args.rows, heads, args.tokens, args.tokens)
    print(f"\nOne attention-probability dropout mask, shape {shape} ({args.rows * heads * args.tokens**2:,} elements)")
    print("| generator | ms (median) |\n|---|---:|")
    for name, ms in mask_costs(shape, args.rate, args.repeats).items():
        print(f"| {name} | {ms:.1f} |", flush=True)
    print(f"\nWhole train step, {args.model}, {args.rows} rows x {args.tokens} tokens, float32")
    print("| layers | dropout | step ms (median) |\n|---|---:|---:|")
    for layout in args.layouts:
        for rate in (args.rate, 0.0):
            ms = step_ms(args.model, args.rows, args.tokens, rate, layout == "scan", args.repeats)
            print(f"| {layout} | {rate} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
