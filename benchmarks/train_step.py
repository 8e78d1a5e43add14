"""Steady-state train-step throughput and model FLOPs utilisation (MFU) of crossjax's jitted train step, and of
the equivalent PyTorch step (sentence-transformers' legacy ``old_fit`` loop body) where CUDA is available.

Models: randomly initialised BERT encoders with a 1-label head (``FlaxAutoModelForSequenceClassification.from_config
(transformers.BertConfig(...))``), a BERT-base-sized one (12 layers, hidden 768, 12 heads, FFN 3072) and a
MiniLM-sized one (6 layers, hidden 384, 12 heads, FFN 1536), vocabulary 30522. Batches are random token ids at the
full sequence length (no padding), float labels in 0..1.

crossjax step: exactly what ``CrossEncoder.fit`` compiles (``crossjax.training.train_program``: the AdamW +
clipping optimizer of ``training.optimizer_for`` with its numbers as traced arguments, WarmupLinear schedule,
BCE-with-logits, the mesh shardings of ``crossjax.parallel`` and donated state). The compute dtype is float32
or bfloat16 (parameters and optimizer state stay float32 either way, as with ``fit(use_amp=True)``).

PyTorch step (where CUDA is available, or anywhere with ``--torch-device cpu``):
``transformers.BertForSequenceClassification``, forward, ``BCEWithLogitsLoss``, backward,
``clip_grad_norm_(1.0)``, ``AdamW`` (no decay on biases/LayerNorm), ``zero_grad``, ``LambdaLR`` step, as
``old_fit`` does; bfloat16 runs under ``torch.autocast(dtype=torch.bfloat16)`` (``old_fit(use_amp=True)`` uses
float16 with a GradScaler instead). float32 matmuls use torch's default (TF32 off), JAX's default precision
on GPU may use TF32: compare float32 rows with that in mind.

Timing: ``--warmup`` steps (the first compiles), then ``--steps`` steps timed end to end, closed by
``jax.block_until_ready`` on the state (``torch.cuda.synchronize`` for PyTorch). Reported: ms/step, pairs/s,
tokens/s, achieved TFLOP/s and MFU.

FLOPs per training step (forward + backward = 3 x forward, the usual 6ND accounting)::

    flops = 6 * N * B * S  +  12 * n_layers * hidden * S^2 * B

with ``B`` the batch size, ``S`` the sequence length, and ``N`` the non-embedding parameters: the encoder
layers' weights and biases (Q, K, V, attention output, FFN in/out, two LayerNorms per layer; pooler and
classifier, which see one token per pair, and the embedding tables are left out). The second term is the
attention score and value matmuls (QK^T and AV, each S^2 x hidden multiply-adds = 2 S^2 hidden FLOPs per
layer per sequence forward, so 4 S^2 hidden, times 3 for training). Softmax, LayerNorm, GELU, the optimizer
and the embedding lookups are not counted. MFU = achieved FLOP/s / peak FLOP/s, with the peak per device
from ``--peak-tflops`` or this table of dense bfloat16 peaks by device kind, times the number of devices of
the mesh (the float32 rows are measured against the same bfloat16 peak):

    H100 / H200 SXM 989, H100 PCIe 756, A100 312, L4 121, TPU v4 275, TPU v5e 197, TPU v5p 459, TPU v6e 918

Usage:
    python benchmarks/train_step.py                       # GPU/TPU: both models, fp32 + bf16, batch 32..256
    python benchmarks/train_step.py --quick               # CPU smoke run: batch 2, 2 timed steps
    python benchmarks/train_step.py --quick --torch-device cpu   # ... with the PyTorch step on CPU too
    python benchmarks/train_step.py --models minilm --dtypes bfloat16 --batch-sizes 128 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

MODELS = {
    "bert-base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "minilm": {"num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536},
}
# Dense bfloat16 peak TFLOP/s by device kind (first match of a substring of jax's / torch's device name, in order).
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0),
    ("TPU v6e", 918.0),
)


def bert_config(name: str, seq_len: int):
    import transformers

    return transformers.BertConfig(
        vocab_size=30522,
        max_position_embeddings=max(512, seq_len),
        type_vocab_size=2,
        num_labels=1,
        hidden_act="gelu",
        **MODELS[name],
    )


def non_embedding_params(config) -> int:
    """Encoder-layer parameters: 4 H^2 + 4 H (Q, K, V, out) + 2 H F + F + H (FFN) + 4 H (two LayerNorms)."""
    h, f = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h)


def step_flops(config, batch: int, seq: int) -> float:
    n = non_embedding_params(config)
    return 6.0 * n * batch * seq + 12.0 * config.num_hidden_layers * config.hidden_size * seq * seq * batch


def peak_tflops(device_kind: str, override: float | None) -> float | None:
    if override is not None:
        return override
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


@dataclass
class Result:
    framework: str
    model: str
    dtype: str
    batch: int
    seq: int
    ms_per_step: float
    flops_per_step: float
    device: str
    peak: float | None
    compile_s: float | None = None
    error: str | None = None

    @property
    def pairs_per_s(self) -> float:
        return self.batch / (self.ms_per_step / 1e3)

    @property
    def tokens_per_s(self) -> float:
        return self.pairs_per_s * self.seq

    @property
    def tflops(self) -> float:
        return self.flops_per_step / (self.ms_per_step / 1e3) / 1e12

    @property
    def mfu(self) -> float | None:
        return self.tflops / self.peak if self.peak else None

    def row(self) -> str:
        if self.error:
            return f"| {self.framework} | {self.model} | {self.dtype} | {self.batch} | {self.error} | | | | |"
        mfu = f"{100 * self.mfu:.1f}%" if self.mfu is not None else "n/a"
        compile_s = f"{self.compile_s:.1f}" if self.compile_s is not None else ""
        return (
            f"| {self.framework} | {self.model} | {self.dtype} | {self.batch} | {self.ms_per_step:.1f} | "
            f"{self.pairs_per_s:,.0f} | {self.tokens_per_s:,.0f} | {self.tflops:.2f} | {mfu} | {compile_s} |"
        )

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(pairs_per_s=None, tokens_per_s=None, tflops=None, mfu=None)
        if not self.error:
            d.update(pairs_per_s=self.pairs_per_s, tokens_per_s=self.tokens_per_s, tflops=self.tflops, mfu=self.mfu)
        return d


# --- crossjax ------------------------------------------------------------------------------------------------


def build_fit_step(
    model_name: str,
    dtype_name: str,
    batch: int,
    seq: int,
    *,
    seed: int = 0,
    sharding: str = "replicated",
    total_steps: int = 100,
    scan_layers: bool = True,
):
    """The train step exactly as ``crossjax.fit_loop`` builds it (AdamW + clipping, WarmupLinear, BCE, donated
    state, the run's numbers as traced arguments), for a random BERT-layout model, with one batch of full-length
    pairs (one per row: no padding, as in the FLOP count). Returns ``(program, state, batch, healthy, hparams,
    config, plan)``; ``program.fn(state, batch, healthy, hparams)`` runs a step."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from crossjax import losses, packing, training
    from crossjax.models.auto import FlaxAutoModelForSequenceClassification
    from crossjax.parallel import make_mesh, put_global

    config = bert_config(model_name, seq)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    plan = make_mesh(sharding)
    plan.check_batch_size(batch)
    model = FlaxAutoModelForSequenceClassification.from_config(
        config, dtype=jnp.float32, seed=seed, scan_layers=scan_layers
    )
    params = nnx.state(model, nnx.Param)
    spec = training.OptimizerSpec.create("WarmupLinear", max_grad_norm=1.0)
    numbers = training.optimizer_hparams(2e-5, max(1, total_steps // 10), total_steps, 0.01, max_grad_norm=1.0)
    mask = training.decay_mask(model, params)
    state, state_shardings = training.init_train_state(model, training.optimizer_for(spec, mask, numbers), plan)
    graphdef = training.graphdef_with_dtype(model, dtype, train=True)
    program, _ = training.train_program(
        graphdef, spec, mask, losses.binary_cross_entropy_with_logits, losses.identity, 1, state_shardings, plan
    )
    rng = np.random.default_rng(seed)
    batch_np = packing.one_pair_per_row(
        rng.integers(1000, config.vocab_size, size=(batch, seq), dtype=np.int32),
        np.concatenate([np.zeros((batch, seq // 2), np.int32), np.ones((batch, seq - seq // 2), np.int32)], axis=1),
        rng.random(batch, dtype=np.float32),
        groups=plan.data_shards,
    )
    device_batch = training.batch_to_global(batch_np, plan)
    hparams = put_global(numbers, plan.replicated)
    healthy = put_global(np.array(True), plan.replicated)
    return program, state, device_batch, healthy, hparams, config, plan


def crossjax_step(model_name: str, dtype_name: str, batch: int, seq: int, args) -> Result:
    import jax

    device = jax.devices()[0].device_kind
    program, state, device_batch, healthy, hparams, config, _ = build_fit_step(
        model_name,
        dtype_name,
        batch,
        seq,
        seed=args.seed,
        sharding=args.sharding,
        total_steps=args.warmup + args.steps,
    )

    start = time.perf_counter()
    state, metrics = program.fn(state, device_batch, healthy, hparams)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        state, metrics = program.fn(state, device_batch, metrics["finite"], hparams)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = program.fn(state, device_batch, metrics["finite"], hparams)  # as fit threads the healthy flag
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    if not bool(metrics["finite"]):
        raise FloatingPointError(f"non-finite loss {float(metrics['loss'])}")
    del state
    return Result(
        "crossjax",
        model_name,
        dtype_name,
        batch,
        seq,
        1e3 * seconds / args.steps,
        step_flops(config, batch, seq),
        f"{jax.device_count()} x {device}",
        _times(peak_tflops(device, args.peak_tflops), jax.device_count()),
        compile_s,
    )


# --- PyTorch (sentence-transformers' old_fit step) -----------------------------------------------------------


def torch_step(model_name: str, dtype_name: str, batch: int, seq: int, args) -> Result:
    import torch
    import transformers

    config = bert_config(model_name, seq)
    torch.manual_seed(args.seed)
    on = args.torch_device
    cuda = on.startswith("cuda")
    device = torch.cuda.get_device_name(on) if cuda else "cpu"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(on)

    model = transformers.BertForSequenceClassification(config).to(on).train()
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=2e-5)
    total_steps = args.warmup + args.steps
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, max(1, total_steps // 10), total_steps)
    loss_fct = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(args.seed)
    features = {
        "input_ids": torch.randint(1000, config.vocab_size, (batch, seq), generator=gen).to(on),
        "attention_mask": torch.ones((batch, seq), dtype=torch.long).to(on),
        "token_type_ids": torch.cat(
            [torch.zeros((batch, seq // 2), dtype=torch.long), torch.ones((batch, seq - seq // 2), dtype=torch.long)],
            dim=1,
        ).to(on),
    }
    labels = torch.rand(batch, generator=gen).to(on)
    autocast = dtype_name == "bfloat16"

    def step() -> None:
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(**features, return_dict=True).logits.view(-1)
            loss = loss_fct(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()

    start = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    return Result(
        "pytorch",
        model_name,
        dtype_name,
        batch,
        seq,
        1e3 * seconds / args.steps,
        step_flops(config, batch, seq),
        device,
        peak_tflops(device, args.peak_tflops),
        first_s,
    )


def _times(peak: float | None, devices: int) -> float | None:
    """The mesh spans every device, so the step's FLOPs are measured against all of their peaks."""
    return None if peak is None else peak * devices


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "out of memory" in text or "resource_exhausted" in text or "outofmemory" in text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert-base,minilm", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch-sizes", default="32,64,128,256")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="peak TFLOP/s per device for MFU (default: the table)"
    )
    parser.add_argument("--frameworks", default="crossjax,pytorch", help="pytorch runs only where CUDA is available")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: batch 2, 1 warm-up + 2 timed steps")
    parser.add_argument("--torch-device", default="cuda", help="where the PyTorch step runs (cuda, cuda:1, cpu)")
    parser.add_argument("--sharding", choices=("replicated", "fsdp"), default="replicated", help="crossjax mesh mode")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.steps, args.warmup = "2", 2, 1
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    os.environ["CROSSJAX_COMPILATION_CACHE"] = "0"  # "first step s" is a compilation, not a cache load

    import jax

    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    batches = [int(b) for b in args.batch_sizes.split(",")]

    torch_ok = False
    if "pytorch" in frameworks:
        try:
            import torch

            torch_ok = args.torch_device == "cpu" or (
                args.torch_device.startswith("cuda") and torch.cuda.is_available()
            )
        except ImportError:
            torch_ok = False
    device_kind = jax.devices()[0].device_kind
    _bench.print_info("train_step")
    print(f"peak TFLOP/s for MFU: {peak_tflops(device_kind, args.peak_tflops) or 'unknown (MFU n/a)'}")
    if "pytorch" in frameworks and not torch_ok:
        print(f"pytorch: skipped ({args.torch_device} is not available to torch; --torch-device cpu runs it on CPU)")
    print(f"seq {args.seq_len}, {args.warmup} warm-up + {args.steps} timed steps")
    for name in models:
        config = bert_config(name, args.seq_len)
        print(
            f"{name}: {non_embedding_params(config) / 1e6:.1f}M non-embedding parameters, "
            f"{step_flops(config, 1, args.seq_len) / 1e9:.2f} GFLOP per pair per step"
        )
    print()
    print("| framework | model | dtype | batch | ms/step | pairs/s | tokens/s | TFLOP/s | MFU | first step s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")

    results: list[Result] = []
    runners = {"crossjax": crossjax_step, "pytorch": torch_step}
    for framework in frameworks:
        if framework not in runners:
            parser.error(f"unknown framework {framework!r}")
        if framework == "pytorch" and not torch_ok:
            continue
        for name in models:
            for dtype_name in dtypes:
                for batch in batches:
                    try:
                        result = runners[framework](name, dtype_name, batch, args.seq_len, args)
                    except Exception as exc:  # noqa: BLE001 - report OOM and go on with the next size
                        if not _is_oom(exc):
                            raise
                        result = Result(
                            framework,
                            name,
                            dtype_name,
                            batch,
                            args.seq_len,
                            math.nan,
                            0.0,
                            device_kind,
                            None,
                            error="out of memory",
                        )
                    results.append(result)
                    print(result.row(), flush=True)
                    if framework == "crossjax":
                        jax.clear_caches()
                    else:
                        import torch

                        if torch.cuda.is_available():
                            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=2)


if __name__ == "__main__":
    main()
