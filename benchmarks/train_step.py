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
float16 with a GradScaler instead). float32 matmuls are full float32 on both sides: torch's default leaves TF32
off, and crossjax's float32 compute asks for full precision (an H200 profile shows cuBLAS's FFMA kernels).

Timing: ``--warmup`` steps (the first compiles), then ``--steps`` steps timed end to end, closed by
``jax.block_until_ready`` on the state (``torch.cuda.synchronize`` for PyTorch). Reported: ms/step, pairs/s,
tokens/s, achieved TFLOP/s and MFU.

``--pairs stsb``: real pairs instead of full-length random ones. The first ``--steps`` random batches of
``batch`` STS-B train pairs (``--data-dir``/stsb, tokenized with ``--tokenizer``'s tokenizer, ``max_length``
``--seq-len``, labels score/5) go to both libraries. crossjax packs them as ``fit`` does
(``packing.plan_packing`` over these steps, at most ``--max-shapes`` shapes); PyTorch pads each batch to its
longest pair, as ``old_fit``'s collate does. Every batch is on the device before the clock starts (neither
library's host-side tokenizing or packing is timed), each distinct batch runs once untimed first (so every
packed shape is compiled), then all of them once timed. FLOPs are counted on real tokens only (each pair's own
length ``n``: ``6 N n + 12 layers hidden n^2``), so "real-token MFU" is useful work over peak, the same
numerator for both libraries; ``efficiency`` is real / computed tokens.

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
    python benchmarks/train_step.py --pairs stsb --quick --torch-device cpu     # real pairs, packed vs padded
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
    """Training FLOPs of a (batch, seq) step computed in full: ``batch`` pairs of ``seq`` tokens."""
    return real_token_flops(config, [seq] * batch)


def real_token_flops(config, lengths, training: bool = True) -> float:
    """FLOPs of pairs of ``lengths`` tokens, each alone at its own length ``n`` (no padding, no packing):
    ``2 N n + 4 layers hidden n^2`` a forward pass, three times that to train (the module docstring)."""
    import numpy as np

    n = np.asarray(lengths, dtype=np.float64)
    forward = 2.0 * non_embedding_params(config) * n + 4.0 * config.num_hidden_layers * config.hidden_size * n * n
    return float((3.0 if training else 1.0) * forward.sum())


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
    efficiency: float = 1.0  # real / computed tokens
    tokens_per_step: float | None = None  # real tokens (default: batch x seq, the full-length pairs)

    @property
    def pairs_per_s(self) -> float:
        return self.batch / (self.ms_per_step / 1e3)

    @property
    def tokens_per_s(self) -> float:
        tokens = self.batch * self.seq if self.tokens_per_step is None else self.tokens_per_step
        return tokens / (self.ms_per_step / 1e3)

    @property
    def tflops(self) -> float:
        return self.flops_per_step / (self.ms_per_step / 1e3) / 1e12

    @property
    def mfu(self) -> float | None:
        return self.tflops / self.peak if self.peak else None

    def row(self) -> str:
        if self.error:
            return f"| {self.framework} | {self.model} | {self.dtype} | {self.batch} | {self.error} | | | | | | |"
        mfu = f"{100 * self.mfu:.1f}%" if self.mfu is not None else "n/a"
        compile_s = f"{self.compile_s:.1f}" if self.compile_s is not None else ""
        return (
            f"| {self.framework} | {self.model} | {self.dtype} | {self.batch} | {self.ms_per_step:.1f} | "
            f"{self.pairs_per_s:,.0f} | {self.tokens_per_s:,.0f} | {self.tflops:.2f} | {mfu} | "
            f"{100 * self.efficiency:.1f}% | {compile_s} |"
        )

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(pairs_per_s=None, tokens_per_s=None, tflops=None, mfu=None)
        if not self.error:
            d.update(pairs_per_s=self.pairs_per_s, tokens_per_s=self.tokens_per_s, tflops=self.tflops, mfu=self.mfu)
        return d


# --- crossjax ------------------------------------------------------------------------------------------------


def build_fit_program(
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
    state, the run's numbers as traced arguments), for a random BERT-layout model. Returns ``(program, state,
    healthy, hparams, config, plan)``; ``program.fn(state, batch, healthy, hparams, gradients)`` runs a step
    (``gradients``: :func:`gradient_buffer`, then what the previous step returned)."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from crossjax import losses, training
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
    hparams = put_global(numbers, plan.replicated)
    healthy = put_global(np.array(True), plan.replicated)
    return program, state, healthy, hparams, config, plan


def gradient_buffer(state, plan):
    """The first ``gradients`` argument of ``program.fn`` (each step returns the next one, as in ``fit``)."""
    from crossjax import training

    return training.new_gradient_buffer(state.params, plan.state_shardings(state.params))


def build_fit_step(model_name: str, dtype_name: str, batch: int, seq: int, **options):
    """:func:`build_fit_program` (same keyword ``options``) with one batch of full-length random pairs (one per
    row: no padding, as in the FLOP count). Returns ``(program, state, batch, healthy, hparams, config, plan)``."""
    program, state, healthy, hparams, config, plan = build_fit_program(model_name, dtype_name, batch, seq, **options)
    batch_on_mesh = synthetic_batch(config, plan, batch, seq, options.get("seed", 0))
    return program, state, batch_on_mesh, healthy, hparams, config, plan


def synthetic_batch(config, plan, batch: int, seq: int, seed: int) -> dict:
    """``batch`` full-length pairs of random ids on the mesh, half segment A and half B."""
    import numpy as np

    from crossjax import packing, training

    rng = np.random.default_rng(seed)
    batch_np = packing.one_pair_per_row(
        rng.integers(1000, config.vocab_size, size=(batch, seq), dtype=np.int32),
        np.concatenate([np.zeros((batch, seq // 2), np.int32), np.ones((batch, seq - seq // 2), np.int32)], axis=1),
        rng.random(batch, dtype=np.float32),
        groups=plan.data_shards,
    )
    return training.batch_to_global(batch_np, plan)


@dataclass
class RealPairs:
    """Real STS-B pairs, tokenized once, and the random batches (example indices) both libraries train on."""

    tokenized: object  # crossjax.data.TokenizedPairs
    labels: object  # float32 [N]
    steps: list  # of int arrays, one batch each
    pad_id: int

    @classmethod
    def load(cls, tokenizer_dir: str, data_dir: Path, batch: int, seq: int, steps: int, seed: int) -> RealPairs:
        import _common
        import numpy as np
        import transformers

        from crossjax import data as data_lib

        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        rows = _common.read_stsb_csv(data_dir / "stsb", "train")
        tokenized = data_lib.tokenize_pairs(tokenizer, [r[0] for r in rows], [r[1] for r in rows], seq)
        batches = data_lib.plan_batches(tokenized.lengths, batch, True, seed, 0, True, group_by_length=False)
        if len(batches) < steps:
            raise SystemExit(f"STS-B train holds {len(batches)} batches of {batch}, fewer than --steps {steps}")
        labels = np.asarray([r[2] for r in rows], np.float32)
        return cls(tokenized, labels, batches[:steps], tokenizer.pad_token_id)

    def flops(self, config, step: int) -> float:
        """Training FLOPs of one step's real tokens: each pair at its own length."""
        return real_token_flops(config, self.tokenized.lengths[self.steps[step]])

    def real_tokens(self) -> int:
        return int(sum(int(self.tokenized.lengths[s].sum()) for s in self.steps))

    def padded(self, step: int):
        """One batch padded to its longest pair, as sentence-transformers' collate pads it: ids, types, mask."""
        import numpy as np

        rows = self.steps[step]
        lengths = self.tokenized.lengths[rows]
        width = int(lengths.max())
        ids = np.full((len(rows), width), self.pad_id, np.int64)
        types = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            n = int(lengths[i])
            ids[i, :n] = self.tokenized.input_ids[r]
            types[i, :n] = self.tokenized.token_type_ids[r]
            mask[i, :n] = 1
        return ids, types, mask, self.labels[rows]


def _run_steps(step, state, batches, healthy):
    """Each batch once: returns the state, the last metrics and the seconds (the state is ready at the end)."""
    import jax

    start = time.perf_counter()
    metrics = {"finite": healthy}
    for batch in batches:
        state, metrics = step(state, batch, metrics["finite"])  # as fit threads the healthy flag
    jax.block_until_ready((state, metrics))
    return state, metrics, time.perf_counter() - start


def crossjax_step(model_name: str, dtype_name: str, batch: int, seq: int, args, real: RealPairs | None = None):
    import jax

    from crossjax import packing, training

    training.clear_program_cache()  # another row's (or another gate's) program must not be reused
    device = jax.devices()[0].device_kind
    total = args.warmup + args.steps if real is None else 2 * len(real.steps)
    program, state, healthy, hparams, config, plan = build_fit_program(
        model_name, dtype_name, batch, seq, seed=args.seed, sharding=args.sharding, total_steps=total
    )

    gradients = {"buffer": gradient_buffer(state, plan)}

    def step(state, device_batch, flag):
        state, metrics, gradients["buffer"] = program.fn(state, device_batch, flag, hparams, gradients["buffer"])
        return state, metrics

    if real is None:
        device_batch = synthetic_batch(config, plan, batch, seq, args.seed)
        start = time.perf_counter()
        state, metrics, _ = _run_steps(step, state, [device_batch], healthy)
        compile_s = time.perf_counter() - start
        state, metrics, _ = _run_steps(step, state, [device_batch] * (args.warmup - 1), metrics["finite"])
        state, metrics, seconds = _run_steps(step, state, [device_batch] * args.steps, metrics["finite"])
        flops, efficiency, steps, tokens = step_flops(config, batch, seq), 1.0, args.steps, batch * seq
    else:
        layout = packing.plan_packing(
            real.steps, real.tokenized.lengths, plan.data_shards, batch // plan.data_shards,
            hidden_size=config.hidden_size, max_shapes=args.max_shapes,
        )  # fmt: skip
        packed = [packing.pack(real.tokenized, s, real.labels, layout, real.pad_id) for s in real.steps]
        efficiency = sum(b.real_tokens for b in packed) / sum(b.computed_tokens for b in packed)
        device_batches = [training.batch_to_global(b, plan) for b in packed]
        start = time.perf_counter()
        state, metrics, _ = _run_steps(step, state, device_batches, healthy)  # compiles every shape
        compile_s = time.perf_counter() - start
        state, metrics, seconds = _run_steps(step, state, device_batches, metrics["finite"])
        steps = len(device_batches)
        flops = sum(real.flops(config, i) for i in range(steps)) / steps
        tokens = real.real_tokens() / steps
        print(f"  crossjax packed shapes {layout.shapes}", flush=True)
    if not bool(metrics["finite"]):
        raise FloatingPointError(f"non-finite loss {float(metrics['loss'])}")
    del state
    return Result(
        "crossjax",
        model_name,
        dtype_name,
        batch,
        seq,
        1e3 * seconds / steps,
        flops,
        f"{jax.device_count()} x {device}",
        _times(peak_tflops(device, args.peak_tflops), jax.device_count()),
        compile_s,
        efficiency=efficiency,
        tokens_per_step=tokens,
    )


# --- PyTorch (sentence-transformers' old_fit step) -----------------------------------------------------------


def torch_step(model_name: str, dtype_name: str, batch: int, seq: int, args, real: RealPairs | None = None):
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
    total_steps = args.warmup + args.steps if real is None else 2 * len(real.steps)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, max(1, total_steps // 10), total_steps)
    loss_fct = torch.nn.BCEWithLogitsLoss()
    if real is None:
        gen = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=gen)
        types = torch.cat([torch.zeros((batch, seq // 2)), torch.ones((batch, seq - seq // 2))], dim=1).long()
        host = [(ids, types, torch.ones((batch, seq), dtype=torch.long), torch.rand(batch, generator=gen))]
        computed = batch * seq
    else:
        host = [tuple(torch.from_numpy(a) for a in real.padded(i)) for i in range(len(real.steps))]
        computed = sum(int(h[0].numel()) for h in host)
    batches = [
        ({"input_ids": i.to(on), "token_type_ids": t.to(on), "attention_mask": m.to(on)}, y.to(on))
        for i, t, m, y in host
    ]
    autocast = dtype_name == "bfloat16"

    def step(features, labels) -> None:
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(**features, return_dict=True).logits.view(-1)
            loss = loss_fct(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()

    def run(chosen) -> float:
        start = time.perf_counter()
        for features, labels in chosen:
            step(features, labels)
        sync()
        return time.perf_counter() - start

    if real is None:
        first_s = run(batches)
        run(batches * (args.warmup - 1))
        seconds, steps = run(batches * args.steps), args.steps
        flops, tokens, efficiency = step_flops(config, batch, seq), batch * seq, 1.0
    else:
        first_s = run(batches)  # every batch once untimed, as crossjax's compile pass
        seconds, steps = run(batches), len(batches)
        flops = sum(real.flops(config, i) for i in range(steps)) / steps
        tokens, efficiency = real.real_tokens() / steps, real.real_tokens() / computed
    return Result(
        "pytorch",
        model_name,
        dtype_name,
        batch,
        seq,
        1e3 * seconds / steps,
        flops,
        device,
        peak_tflops(device, args.peak_tflops),
        first_s,
        efficiency=efficiency,
        tokens_per_step=tokens,
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
    parser.add_argument("--pairs", choices=("synthetic", "stsb"), default="synthetic", help="see the docstring")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for --pairs stsb (default: MiniLM's)")
    parser.add_argument("--data-dir", type=Path, default=None, help="holds stsb/ (default: ../shared/data)")
    parser.add_argument("--max-shapes", type=int, default=2, help="packed shapes for --pairs stsb, as fit's")
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
    if args.pairs == "synthetic":
        print(f"seq {args.seq_len}, {args.warmup} warm-up + {args.steps} timed steps")
    else:
        print(
            f"STS-B train pairs, max_length {args.seq_len}: {args.steps} distinct random batches, each once "
            f"untimed, then once timed; crossjax packed (<= {args.max_shapes} shapes), PyTorch padded per batch"
        )
    for name in models:
        config = bert_config(name, args.seq_len)
        print(
            f"{name}: {non_embedding_params(config) / 1e6:.1f}M non-embedding parameters, "
            f"{step_flops(config, 1, args.seq_len) / 1e9:.2f} GFLOP per pair per step"
        )
    print()
    tokens = "real tokens/s" if args.pairs == "stsb" else "tokens/s"
    first = "first pass s" if args.pairs == "stsb" else "first step s"
    print(
        f"| framework | model | dtype | batch | ms/step | pairs/s | {tokens} | TFLOP/s | MFU | efficiency | {first} |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    loaded: dict[int, RealPairs] = {}

    def workloads(batch: int) -> RealPairs:
        if batch not in loaded:
            import _common

            loaded[batch] = RealPairs.load(
                args.tokenizer or _common.default_model_dir(), args.data_dir or _common.SHARED_DATA, batch,
                args.seq_len, args.steps, args.seed,
            )  # fmt: skip
        return loaded[batch]

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
                        real = workloads(batch) if args.pairs == "stsb" else None
                        result = runners[framework](name, dtype_name, batch, args.seq_len, args, real)
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
