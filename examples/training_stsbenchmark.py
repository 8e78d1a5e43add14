"""Train a CrossEncoder on the STS benchmark with crossjax, like sentence-transformers' legacy
``examples/training/cross-encoder/training_stsbenchmark.py``.

A CrossEncoder reads a sentence pair together and outputs one score: here a continuous similarity in 0...1
(the gold 0...5 scores divided by 5). It does NOT produce sentence embeddings.

Usage:
    python examples/training_stsbenchmark.py                                    # hub data, distilroberta-base
    python examples/training_stsbenchmark.py --data-dir ../shared/data/stsb --max-train-samples 500 --epochs 1
"""

from __future__ import annotations

import _common

from crossjax import CrossEncoder, DataLoader
from crossjax.evaluation import CECorrelationEvaluator


def main() -> None:
    parser = _common.build_parser(__doc__.splitlines()[0], evaluation_steps=0, output_prefix="training_stsbenchmark")
    args = parser.parse_args()
    _common.setup(args)  # multi-host start-up comes before anything else touches JAX

    _common.main_print("Read STSbenchmark train and dev data")
    train_rows = _common.load_rows("stsb", args, args.train_split, args.max_train_samples)
    dev_rows = _common.load_rows("stsb", args, args.dev_split, args.max_dev_samples)
    # As we want symmetric scores, CrossEncoder(A, B) = CrossEncoder(B, A), we train on both orders.
    train_samples = _common.to_examples(train_rows, both_orders=True)
    dev_samples = _common.to_examples(dev_rows)

    # We use distilroberta-base as base model and set num_labels=1: it predicts a continuous score 0...1.
    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length, seed=args.seed)

    train_dataloader = DataLoader(train_samples, shuffle=True, batch_size=args.batch_size, seed=args.seed)
    evaluator = CECorrelationEvaluator.from_input_examples(dev_samples, name="sts-dev")
    _common.fit_and_report(args, model, train_dataloader, evaluator)


if __name__ == "__main__":
    _common.run(main)
