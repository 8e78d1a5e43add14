"""Write a randomly initialised BERT checkpoint directory (``BertModel`` weights, config, tokenizer files).

For benchmarks on machines that hold no pretrained weights (a lent GPU receives only the repository): the
speed of a step does not depend on the weights' values, only on the architecture and the data. The sizes are
``train_step.MODELS``' (``minilm`` is all-MiniLM-L6-v2's shape). Needs torch (transformers' ``BertModel``).

Usage:
    python benchmarks/random_checkpoint.py OUT_DIR --model minilm --tokenizer DIR_WITH_TOKENIZER_FILES
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS, bert_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm")
    parser.add_argument("--tokenizer", required=True, help="a directory (or hub id) with a BERT tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import transformers

    torch.manual_seed(args.seed)
    transformers.BertModel(bert_config(args.model, 512)).save_pretrained(args.out)
    transformers.AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(args.out)
    print(f"random {args.model} checkpoint written to {args.out}")


if __name__ == "__main__":
    main()
