"""Does a train-mode step with dropout behave as PyTorch's? The gradient norm of one BCE step, averaged over many
dropout draws, in transformers (PyTorch) and crossjax from the same weights and the same 16 STS-B pairs.

With dropout off the two libraries give the same gradients (to float32 round-off); with dropout on each draw
differs, so the comparison is of means over ``--seeds`` draws (a Welch t-test says whether the gap is more than
sampling noise). crossjax is measured on both of its paths: the padded batch (``model(...)``) and the packed batch
``fit`` and the trainer train on (several pairs a row, the last layer for the first tokens only). Each dropout site
can be switched on alone (``--hidden`` / ``--attention``; BERT's classifier dropout follows the hidden rate).
The per-site variance of the logits is checked by ``tests/test_dropout.py`` for six families.

Usage:
    python benchmarks/dropout_parity.py                         # MiniLM with a new head, rates 0.1, 150 draws
    python benchmarks/dropout_parity.py --hidden 0 --attention 0.1 --seeds 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a checkpoint directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", default=str(_bench.REPO.parent / "shared" / "data" / "stsb"))
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=150)
    parser.add_argument("--hidden", type=float, default=0.1, help="hidden_dropout_prob")
    parser.add_argument("--attention", type=float, default=0.1, help="attention_probs_dropout_prob")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from _common import default_model_dir, read_stsb_csv
    from flax import nnx
    from scipy import stats
    from transformers import AutoTokenizer, BertForSequenceClassification

    from crossjax import data, packing, training
    from crossjax.models import FlaxAutoModelForSequenceClassification

    _bench.print_info("dropout parity: one step's gradient norm over dropout draws")
    rows = read_stsb_csv(args.data_dir, "train")[: args.pairs]
    labels = np.array([r[2] for r in rows], np.float32)
    folder = tempfile.mkdtemp(prefix="dropout-parity-")
    torch.manual_seed(0)  # one new head, saved, which both libraries load
    source = args.model or default_model_dir()
    BertForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(source)
    encoded = tokenizer([r[0] for r in rows], [r[1] for r in rows], padding=True, return_tensors="np")
    rates = dict(hidden_dropout_prob=args.hidden, attention_probs_dropout_prob=args.attention)

    reference = BertForSequenceClassification.from_pretrained(folder, attn_implementation="eager", **rates).train()
    inputs = {k: torch.tensor(v) for k, v in encoded.items()}
    theirs = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        reference.zero_grad()
        logits = reference(**inputs).logits.view(-1)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels)).backward()
        theirs.append(float(torch.sqrt(sum((p.grad**2).sum() for p in reference.parameters() if p.grad is not None))))

    model = FlaxAutoModelForSequenceClassification.from_pretrained(folder, config_kwargs=rates)
    model.train()

    def bce(logits, y, weights):
        per_row = jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        return jnp.sum(weights * per_row) / jnp.sum(weights)

    @nnx.jit
    def padded_norm(model, ids, mask, types, y):
        grads = nnx.grad(lambda m: bce(m(ids, mask, types).reshape(-1), y, jnp.ones_like(y)))(model)
        return jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))

    lengths = encoded["attention_mask"].sum(1).astype(np.int32)
    flat = {k: np.concatenate([encoded[k][i, :n] for i, n in enumerate(lengths)]).astype(np.int32)
            for k in ("input_ids", "token_type_ids")}  # fmt: skip
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokenized = data.TokenizedPairs(flat["input_ids"], flat["token_type_ids"], offsets, lengths, int(lengths.max()))
    order = np.arange(len(rows))
    plan = packing.plan_packing([order], lengths, 1, len(rows), hidden_size=model.config.hidden_size, max_shapes=1)
    packed_batch = packing.pack(tokenized, order, labels, plan, pad_token_id=0)
    batch = {k: jnp.asarray(v) for k, v in packed_batch.device_fields().items()}

    @nnx.jit
    def packed_norm(model, batch):
        def loss(m):
            logits = training.packed_logits(m, batch).reshape(-1)
            return bce(logits, batch["labels"].reshape(-1), batch["example_mask"].reshape(-1))

        grads = nnx.grad(loss)(model)
        return jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))

    ids, mask, types = (jnp.asarray(encoded[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    padded, packed = [], []
    for seed in range(args.seeds):
        nnx.reseed(model, dropout=1000 + seed, policy="match_shape")
        padded.append(float(padded_norm(model, ids, mask, types, jnp.asarray(labels))))
        nnx.reseed(model, dropout=5000 + seed, policy="match_shape")
        packed.append(float(packed_norm(model, batch)))
    theirs = np.array(theirs)
    print(f"\n{args.pairs} STS-B pairs, hidden dropout {args.hidden}, attention dropout {args.attention}, "
          f"{args.seeds} draws each; packed rows: {plan.rows} x {plan.row_lengths[0]} tokens")  # fmt: skip
    print(f"{'':28s} {'mean grad norm':>15s} {'s.e.':>8s} {'/ PyTorch':>10s} {'Welch p':>8s}")
    print(f"{'PyTorch (transformers)':28s} {theirs.mean():15.5f} {theirs.std() / np.sqrt(len(theirs)):8.5f}")
    for name, values in (("crossjax, padded batch", padded), ("crossjax, packed batch", packed)):
        values = np.array(values)
        p = stats.ttest_ind(theirs, values, equal_var=False).pvalue if theirs.std() > 0 else float("nan")
        print(f"{name:28s} {values.mean():15.5f} {values.std() / np.sqrt(len(values)):8.5f} "
              f"{values.mean() / theirs.mean():10.4f} {p:8.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
