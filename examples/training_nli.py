"""Train a CrossEncoder for natural language inference with crossjax, like sentence-transformers' legacy
``examples/training/cross-encoder/training_nli.py``.

Three labels: "contradiction": 0, "entailment": 1, "neutral": 2 (cross-entropy over the logits). Without
``--data-dir`` it reads sentence-transformers/all-nli (SNLI + MultiNLI) from the hub; with ``--data-dir`` it
reads SNLI files (``snli_1.0_{split}.jsonl`` or e-SNLI's ``s1/s2/labels.{split}``).

Usage:
    python examples/training_nli.py
    # the local SNLI copy has no train split: train on dev, evaluate on test
    python examples/training_nli.py --data-dir ../shared/data/snli --train-split dev --dev-split test
"""

from __future__ import annotations

import _common

from crossjax import CrossEncoder, DataLoader
from crossjax.evaluation import CESoftmaxAccuracyEvaluator


def main() -> None:
    parser = _common.build_parser(__doc__.splitlines()[0], evaluation_steps=10000, output_prefix="training_allnli")
    args = parser.parse_args()
    _common.setup(args)

    _common.main_print("Read NLI train and dev data")
    train_samples = _common.to_examples(_common.load_rows("nli", args, args.train_split, args.max_train_samples))
    dev_samples = _common.to_examples(_common.load_rows("nli", args, args.dev_split, args.max_dev_samples))

    label2int = _common.NLI_LABEL2INT
    # distilroberta-base as the base, set up to predict the 3 labels.
    model = CrossEncoder(args.model, num_labels=len(label2int), max_length=args.max_length, seed=args.seed)

    train_dataloader = DataLoader(train_samples, shuffle=True, batch_size=args.batch_size, seed=args.seed)
    # During training, the softmax (argmax) accuracy on the dev set is measured.
    evaluator = CESoftmaxAccuracyEvaluator.from_input_examples(dev_samples, name=f"AllNLI-{args.dev_split}")
    _common.fit_and_report(args, model, train_dataloader, evaluator)


if __name__ == "__main__":
    _common.run(main)
