"""Attention on packed rows: crossjax's XLA path against ``jax.nn.dot_product_attention``'s implementations.

Packed rows need a block-diagonal mask (each token attends only to its own pair's tokens, from the segment ids),
so the question for a GPU is whether cuDNN's fused attention (``implementation="cudnn"``) takes that mask and
beats the plain XLA path crossjax uses (``crossjax.models.layers.scaled_dot_product_attention``). The script
times forward + backward (the gradient of a sum of the output with respect to q, k and v) of each path on
random packed rows (pairs of 16..64 tokens, the STS-B range) and checks each output against crossjax's.
Dropout is off: ``jax.nn.dot_product_attention`` takes none, which is why training keeps the XLA path.

Usage:
    python benchmarks/attention_paths.py                      # GPU: bf16, rows 256 x 128 and 64 x 512
    python benchmarks/attention_paths.py --shapes 4x128 --dtype float32 --repeats 3    # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402


def segments(rows: int, length: int, seed: int):
    """Segment ids of random packed rows: pairs of 16..64 tokens, 0 on the padding at each row's end."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, length), np.int32)
    for r in range(rows):
        column, segment = 0, 1
        while True:
            n = int(rng.integers(16, 65))
            if column + n > length:
                break
            ids[r, column : column + n] = segment
            column, segment = column + n, segment + 1
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="256x128,64x512", help="ROWSxLENGTH, comma-separated")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from crossjax.models.layers import Dropout, scaled_dot_product_attention

    _bench.print_info("attention_paths", {"dtype": args.dtype, "heads x dim": f"{args.heads} x {args.head_dim}"})
    dtype = jnp.dtype(args.dtype)
    no_dropout = Dropout(0.0)

    def crossjax_path(q, k, v, seg):
        mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
        return scaled_dot_product_attention(q, k, v, mask, no_dropout)

    def library_path(implementation):
        def run(q, k, v, seg):
            mask = ((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0))[:, None]
            return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)

        return run

    paths = {"crossjax (XLA)": crossjax_path, "jax.nn xla": library_path("xla"), "jax.nn cudnn": library_path("cudnn")}
    print("| rows x length | path | forward+backward ms | max abs diff vs crossjax |")
    print("|---|---|---:|---:|")
    for shape in args.shapes.split(","):
        rows, length = (int(x) for x in shape.split("x"))
        keys = jax.random.split(jax.random.key(0), 3)
        q, k, v = (jax.random.normal(key, (rows, length, args.heads, args.head_dim), dtype) for key in keys)
        seg = jnp.asarray(segments(rows, length, 0))
        reference = None
        for name, fn in paths.items():

            def loss(q, k, v, fn=fn, seg=seg):
                return fn(q, k, v, seg).astype(jnp.float32).sum()

            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            forward = jax.jit(fn)
            try:
                out = forward(q, k, v, seg)
                jax.block_until_ready(step(q, k, v))
            except Exception as exc:  # noqa: BLE001 - a path this backend or mask does not support
                print(f"| {shape} | {name} | unsupported: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | |")
                continue
            start = time.perf_counter()
            for _ in range(args.repeats):
                result = step(q, k, v)
            jax.block_until_ready(result)
            ms = 1e3 * (time.perf_counter() - start) / args.repeats
            out = out.astype(jnp.float32) * (seg[:, :, None, None] > 0)  # padding rows' outputs are unspecified
            reference = out if reference is None else reference
            diff = float(jnp.abs(out - reference).max())
            print(f"| {shape} | {name} | {ms:.3f} | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
