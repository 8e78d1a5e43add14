"""Train a reranker the sentence-transformers 4+ way with crossjax: BM25 hard negatives, ``CrossEncoderTrainer``
with a listwise or in-batch-negative loss, and NDCG@10 on BM25 candidates before and after training (like
sentence-transformers' ``examples/cross_encoder/training/rerankers/training_*_lambda.py``).

Data: (question, answer) pairs to train on and a BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
``qrels/test.tsv``) to evaluate on. With ``--data-dir DIR`` they are ``DIR/trecqa/train.csv`` (TrecQA answer
selection, the positives of its candidate lists) and ``DIR/msmarco`` (``--eval-dirs`` adds more folders, e.g.
``DIR/dbpedia-entity``). Without ``--data-dir`` the pairs come from the hub dataset
``sentence-transformers/natural-questions`` and ``--eval-dirs`` must name local BEIR folders.

Negatives are mined with BM25 over all answers of the training data (``crossjax.util.mine_hard_negatives``),
in the layout the loss wants: ``(query, [docs], [labels])`` lists for the listwise losses, ``(query, doc,
label)`` pairs for ``bce``, ``(query, positive, negative_1..n)`` tuples for ``mnrl``/``cmnrl``.

Usage:
    python examples/training_reranker.py --data-dir ../shared/data
    python examples/training_reranker.py --data-dir ../shared/data --loss mnrl --max-steps 50
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import _common

LOSSES = ("lambda", "listnet", "listmle", "plistmle", "ranknet", "adrmse", "bce", "mnrl", "cmnrl")
LISTWISE = {"lambda", "listnet", "listmle", "plistmle", "ranknet", "adrmse"}


def build_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.RawTextHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The help's own line breaks, and every flag's default."""

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=Formatter)
    p.add_argument("--model", default=_common.default_model_dir(), help="hub id or local Hugging Face directory")
    p.add_argument("--data-dir", type=Path, default=None, help="local data folder (trecqa/, msmarco/); None: the hub")
    p.add_argument("--eval-dirs", type=Path, nargs="*", default=None, help="BEIR folders to evaluate on")
    p.add_argument("--loss", choices=LOSSES, default="lambda", help="training loss (lambda: LambdaLoss)")
    p.add_argument("--num-negatives", type=int, default=5, help="BM25 hard negatives per question")
    p.add_argument("--max-train-pairs", type=int, default=None, help="use the first N (question, answer) pairs")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training rows")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (-1: epochs)")
    p.add_argument("--batch-size", type=int, default=16, help="rows (questions) per device and step")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up steps, or a fraction of the run below 1")
    p.add_argument("--rerank-k", type=int, default=20, help="BM25 candidates reranked per evaluation query")
    p.add_argument("--max-eval-queries", type=int, default=None, help="evaluate on the first N judged queries")
    p.add_argument("--max-length", type=int, default=256, help="token limit per (question, answer) pair")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute (float32 master weights)")
    p.add_argument("--seed", type=int, default=12, help="data order, negatives, dropout, the new head")
    p.add_argument(
        "--output",
        default="output/training_reranker",
        help="trainer output folder (the model goes to its final/); a URL such as gs://... is written locally "
        "first and uploaded with fsspec at the end",
    )
    p.add_argument("--coordinator-address", default=None, help="multi-host: host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    return p


def training_pairs(args: argparse.Namespace) -> dict[str, list[str]]:
    """(question, answer) positives."""
    if args.data_dir is None:
        from datasets import load_dataset

        data = load_dataset("sentence-transformers/natural-questions", split="train")
        pairs = {"query": data["query"], "answer": data["answer"]}
    else:
        path = args.data_dir / "trecqa" / "train.csv"
        if not path.exists():
            raise SystemExit(f"no TrecQA training file: {path} is missing")
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["label"] == "1"]
        pairs = {"query": [r["qtext"] for r in rows], "answer": [r["atext"] for r in rows]}
    if args.max_train_pairs:
        pairs = {k: v[: args.max_train_pairs] for k, v in pairs.items()}
    return pairs


def make_loss(name: str, model):
    from crossjax import losses

    return {
        "lambda": lambda: losses.LambdaLoss(model),
        "listnet": lambda: losses.ListNetLoss(model),
        "listmle": lambda: losses.ListMLELoss(model),
        "plistmle": lambda: losses.PListMLELoss(model),
        "ranknet": lambda: losses.RankNetLoss(model),
        "adrmse": lambda: losses.ADRMSELoss(model),
        "bce": lambda: losses.BinaryCrossEntropyLoss(model),
        "mnrl": lambda: losses.MultipleNegativesRankingLoss(model),
        "cmnrl": lambda: losses.CachedMultipleNegativesRankingLoss(model),
    }[name]()


def main() -> None:
    args = build_parser().parse_args()
    _common.setup(args)  # multi-host start-up comes before anything else touches JAX
    output_dir = _common._Output(args.output)  # a URL fails now (no filesystem package), not after training
    from datasets import Dataset

    from crossjax import CrossEncoder
    from crossjax.evaluation import CrossEncoderBEIREvaluator
    from crossjax.trainer import CrossEncoderTrainer
    from crossjax.training_args import CrossEncoderTrainingArguments
    from crossjax.util import mine_hard_negatives

    # DIR/msmarco, and the folders --eval-dirs adds (without --data-dir, only those)
    eval_dirs = ([args.data_dir / "msmarco"] if args.data_dir else []) + list(args.eval_dirs or [])
    eval_dirs = list(dict.fromkeys(eval_dirs))
    if not eval_dirs:
        raise SystemExit("--eval-dirs is required without --data-dir (local BEIR folders)")
    # The BEIR folders are read now: a wrong folder stops the run before mining and loading the model.
    evaluator = CrossEncoderBEIREvaluator(
        [str(d) for d in eval_dirs], rerank_k=args.rerank_k, max_queries=args.max_eval_queries
    )

    # 1. Hard negatives: BM25 over every answer of the training data.
    pairs = Dataset.from_dict(training_pairs(args))
    output_format = {"bce": "labeled-pair", "mnrl": "n-tuple", "cmnrl": "n-tuple"}.get(args.loss, "labeled-list")
    train_dataset = mine_hard_negatives(
        pairs,
        corpus=list(dict.fromkeys(pairs["answer"])),
        num_negatives=args.num_negatives,
        output_format=output_format,
        random_seed=args.seed,
    )
    _common.main_print(f"Training data: {len(train_dataset)} rows {train_dataset.column_names} ({output_format})")

    # 2. The model and the evaluator (BM25 top-k of each judged query, reranked).
    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length, seed=args.seed)
    before = evaluator(model)
    _common.main_print(f"Before training: {evaluator.primary_metric} = {before[evaluator.primary_metric]:.4f}")

    # 3. Train.
    training_args = CrossEncoderTrainingArguments(
        output_dir=output_dir.local,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        bf16=args.bf16,
        seed=args.seed,
        logging_steps=10,
        save_strategy="no",
    )
    trainer = CrossEncoderTrainer(
        model=model, args=training_args, train_dataset=train_dataset, loss=make_loss(args.loss, model)
    )
    output = trainer.train()
    m = output.metrics
    _common.main_print(
        f"train: {output.global_step} steps in {m['train_runtime']:.1f} s, {m['pairs_per_second']:.1f} pairs/s, "
        f"loss {output.training_loss:.4f}, padding efficiency {100 * m['padding_efficiency']:.1f}%, "
        f"{m['compilations']} compilations {m['compiled_shapes']}"
    )

    # 4. Evaluate again and export.
    after = evaluator(model)
    for key in sorted(after):
        if key.endswith("mean_ndcg@10") or key.endswith("mean_mrr@10") or key.endswith("mean_map"):
            _common.main_print(f"  {key}: before {before[key]:.4f} -> after {after[key]:.4f}")
    model.save(str(Path(output_dir.local) / "final"))
    output_dir.finish()
    _common.main_print(f"Model exported to {args.output.rstrip('/')}/final")


if __name__ == "__main__":
    _common.run(main)
