"""The three training examples run end to end on local data and export a model PyTorch can load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, save_tiny_bert, shared_data

CASES = {
    "training_stsbenchmark.py": ("stsb", [], "spearman", 1),
    "training_quora_duplicate_questions.py": ("mrpc", [], "average_precision", 1),
    "training_nli.py": ("snli", ["--train-split", "dev", "--dev-split", "test"], "f1_macro", 3),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_trains_and_exports(script, minilm_dir, tmp_path):
    """Each example on its real data with a tiny random BERT and MiniLM's tokenizer: the example's own steps,
    not MiniLM's compile, take the time (loading the real checkpoint is tested in test_hf_checkpoints)."""
    from transformers import AutoTokenizer

    folder, extra, expected_word, num_labels = CASES[script]
    data_dir = shared_data(folder)
    model_dir = save_tiny_bert(tmp_path / "tiny", AutoTokenizer.from_pretrained(minilm_dir), num_labels=num_labels)
    out = tmp_path / "model"
    cmd = [
        sys.executable, str(REPO / "examples" / script), "--model", str(model_dir), "--data-dir", str(data_dir),
        "--epochs", "1", "--batch-size", "8", "--max-length", "64", "--max-train-samples", "24",
        "--max-dev-samples", "24", "--output", str(out), "--no-progress-bar", *extra,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert expected_word in result.stdout.lower()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == num_labels
    from transformers import AutoModelForSequenceClassification

    _, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert Path(out / "tokenizer.json").exists()


def test_reranker_example_mines_trains_and_evaluates(minilm_dir, tmp_path):
    """examples/training_reranker.py: BM25 hard negatives on TrecQA, LambdaLoss through CrossEncoderTrainer,
    NDCG@10 on the msmarco BEIR folder before and after, and an export PyTorch loads (a tiny random BERT with
    MiniLM's tokenizer, so the test spends its time in the example's steps rather than compiling MiniLM)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data_dir = shared_data()
    model_dir = save_tiny_bert(tmp_path / "tiny", AutoTokenizer.from_pretrained(minilm_dir))
    out = tmp_path / "reranker"
    cmd = [
        sys.executable, str(REPO / "examples" / "training_reranker.py"), "--model", str(model_dir),
        "--data-dir", str(data_dir), "--max-train-pairs", "16", "--num-negatives", "3", "--max-steps", "2",
        "--batch-size", "4", "--max-length", "64", "--rerank-k", "4", "--max-eval-queries", "2",
        "--output", str(out),
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train: 2 steps" in result.stdout
    assert "mean_ndcg@10: before" in result.stdout
    _, info = AutoModelForSequenceClassification.from_pretrained(out / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
