"""The three training examples run end to end on local data and export a model PyTorch can load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_data

CASES = {
    "training_stsbenchmark.py": ("stsb", [], "spearman", 1),
    "training_quora_duplicate_questions.py": ("mrpc", [], "average_precision", 1),
    "training_nli.py": ("snli", ["--train-split", "dev", "--dev-split", "test"], "f1_macro", 3),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_trains_and_exports(script, minilm_dir, tmp_path):
    folder, extra, expected_word, num_labels = CASES[script]
    data_dir = shared_data(folder)
    out = tmp_path / "model"
    cmd = [
        sys.executable, str(REPO / "examples" / script), "--model", str(minilm_dir), "--data-dir", str(data_dir),
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
