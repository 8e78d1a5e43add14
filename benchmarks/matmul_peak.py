"""Each library's float32 matmul speed at an encoder layer's shapes: XLA (``jax.jit(a @ b)``) vs PyTorch, one process.

On a CPU, crossjax can only beat sentence-transformers by computing fewer tokens, compiling less and leaving no
gaps, so its throughput is read against what its matmul kernels can do, and PyTorch's against PyTorch's. This
script measures that ceiling: for ``M`` tokens (``--tokens``) it times the three matmul shapes of a BERT layer of
hidden size ``H`` and FFN size ``F`` (``M x H @ H x H``: Q, K, V and the attention output; ``M x H @ H x F``: FFN
in; ``M x F @ F x H``: FFN out), each library with as many threads as the process has cores, the fastest of
``--repeats`` calls (other load only slows a call down). The peak of a library is its best shape at its best
``M``; :func:`peaks` returns it for ``train_throughput.py`` (achieved real-token GFLOP/s against it).

Usage:
    python benchmarks/matmul_peak.py                             # MiniLM's shapes (H 384, F 1536)
    python benchmarks/matmul_peak.py --hidden 768 --inner 3072   # BERT-base's
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

TOKENS = (352, 1024, 2688, 4096, 6344)  # 16 STS-B pairs, ..., a LambdaLoss step (14 x 192), ..., an MNRL step


def layer_shapes(hidden: int, inner: int) -> list[tuple[str, int, int]]:
    """(name, K, N) of a BERT layer's weight matmuls."""
    return [
        ("H x H (Q, K, V, out)", hidden, hidden),
        ("H x F (FFN in)", hidden, inner),
        ("F x H (FFN out)", inner, hidden),
    ]


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (XLA compiles here)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(hidden: int, inner: int, tokens=TOKENS, repeats: int = 10) -> list[dict]:
    """GFLOP/s of XLA and PyTorch for every (M, shape): rows of ``{"tokens", "shape", "xla", "torch"}``."""
    import jax
    import numpy as np
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    matmul = jax.jit(lambda a, b: a @ b)
    rows = []
    for m in tokens:
        for name, k, n in layer_shapes(hidden, inner):
            a = rng.random((m, k), dtype=np.float32)
            b = rng.random((k, n), dtype=np.float32)
            a_jax, b_jax = jax.device_put(a), jax.device_put(b)
            a_torch, b_torch = torch.from_numpy(a), torch.from_numpy(b)
            flops = 2.0 * m * k * n
            with torch.inference_mode():
                torch_s = _best_seconds(lambda: a_torch @ b_torch, repeats)  # noqa: B023
            xla_s = _best_seconds(lambda: matmul(a_jax, b_jax).block_until_ready(), repeats)  # noqa: B023
            rows.append({"tokens": m, "shape": name, "xla": flops / xla_s / 1e9, "torch": flops / torch_s / 1e9})
    return rows


def peaks(hidden: int, inner: int, repeats: int = 10) -> dict[str, float]:
    """Each library's best GFLOP/s over the layer's shapes at 1,024 and 4,096 tokens (its ceiling here)."""
    rows = measure(hidden, inner, (1024, 4096), repeats)
    return {lib: max(row[lib] for row in rows) for lib in ("xla", "torch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--inner", type=int, default=1536)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS), help="rows M of the left operand")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    _bench.print_info("matmul_peak", {"shapes": f"H {args.hidden}, F {args.inner}, float32"})
    rows = measure(args.hidden, args.inner, args.tokens, args.repeats)
    print("| tokens M | matmul | XLA GFLOP/s | PyTorch GFLOP/s | XLA / PyTorch |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['tokens']:,} | {row['shape']} | {row['xla']:.0f} | {row['torch']:.0f} | "
            f"{row['xla'] / row['torch']:.2f}x |"
        )
    for lib, name in (("xla", "XLA"), ("torch", "PyTorch")):
        print(f"{name} peak over these shapes: {max(row[lib] for row in rows):.0f} GFLOP/s")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
