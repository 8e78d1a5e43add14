"""Train a CrossEncoder for duplicate-question detection with crossjax, like sentence-transformers' legacy
``examples/training/cross-encoder/training_quora_duplicate_questions.py``.

One output label: the model predicts 0...1, whether the two questions are duplicates (binary cross-entropy).
Without ``--data-dir`` it reads sentence-transformers/quora-duplicates from the hub; with ``--data-dir`` it reads
a paraphrase corpus in the MRPC layout (``msr-para-{train,val}.tsv``), a stand-in with the same task shape.

Usage:
    python examples/training_quora_duplicate_questions.py
    python examples/training_quora_duplicate_questions.py --data-dir ../shared/data/mrpc --epochs 1
"""

from __future__ import annotations

import _common

from crossjax import CrossEncoder, DataLoader
from crossjax.evaluation import CEBinaryClassificationEvaluator


def main() -> None:
    parser = _common.build_parser(__doc__.splitlines()[0], evaluation_steps=5000, output_prefix="training_quora")
    args = parser.parse_args()
    _common.setup(args)

    _common.main_print("Read train and dev data")
    train_rows = _common.load_rows("paraphrase", args, args.train_split, args.max_train_samples)
    dev_rows = _common.load_rows("paraphrase", args, args.dev_split, args.max_dev_samples)
    # Duplicate detection is symmetric, so both orders of each training pair are used.
    train_samples = _common.to_examples(train_rows, both_orders=True)
    dev_samples = _common.to_examples(dev_rows)

    # One label: the model outputs a value 0...1 for how likely the two questions are duplicates.
    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length, seed=args.seed)

    train_dataloader = DataLoader(train_samples, shuffle=True, batch_size=args.batch_size, seed=args.seed)
    evaluator = CEBinaryClassificationEvaluator.from_input_examples(dev_samples, name="Quora-dev")
    _common.fit_and_report(args, model, train_dataloader, evaluator)


if __name__ == "__main__":
    _common.run(main)
