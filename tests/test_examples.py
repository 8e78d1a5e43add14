"""The three training examples run end to end on local data and export a model PyTorch can load."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import socket
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
    if script == "training_stsbenchmark.py":  # the folder above the task's (../shared/data) is read too
        data_dir = data_dir.parent
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


def test_make_demo_runs_to_its_end(minilm_dir, tmp_path):
    """``make demo`` (examples/demo.py) with a tiny random BERT: it trains, exports, reloads the export in
    sentence-transformers and runs the model card's snippet (whose model id is the placeholder) on the export."""
    from transformers import AutoTokenizer

    shared_data("stsb")
    model_dir = save_tiny_bert(tmp_path / "tiny", AutoTokenizer.from_pretrained(minilm_dir))
    out = tmp_path / "demo"
    cmd = [
        sys.executable, str(REPO / "examples" / "demo.py"), "--model", str(model_dir), "--max-train-samples", "16",
        "--batch-size", "8", "--max-length", "64", "--output", str(out),
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    difference = result.stdout.split("max |card snippet (sentence-transformers) - crossjax| over its 3 pairs: ")[1]
    assert float(difference.split()[0]) < 1e-5
    assert "demo runtime" in result.stdout


def test_an_example_given_bad_input_says_so_in_one_line(tmp_path):
    """A missing data folder (or a malformed file, a model that cannot load) is one line on stderr, as the
    command line says it, not a traceback; CROSSJAX_DEBUG=1 shows the traceback."""
    cmd = [sys.executable, str(REPO / "examples" / "training_stsbenchmark.py"), "--data-dir", str(tmp_path / "nope")]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"training_stsbenchmark.py: error: no STS-B file for split 'train' in {tmp_path / 'nope'} (looked for "
        "stsb-en-{split}.csv); the folder holds: nothing. Choose splits with --train-split/--dev-split."
    ]
    debug = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "CROSSJAX_DEBUG": "1"})
    assert "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_reranker_example_mines_trains_and_evaluates(minilm_dir, tmp_path):
    """examples/training_reranker.py: BM25 hard negatives on TrecQA, LambdaLoss through CrossEncoderTrainer,
    NDCG@10 on the msmarco BEIR folder before and after, and an export PyTorch loads (a tiny random BERT with
    MiniLM's tokenizer, so the test spends its time in the example's steps rather than compiling MiniLM)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data_dir = shared_data()
    model_dir = save_tiny_bert(tmp_path / "tiny", AutoTokenizer.from_pretrained(minilm_dir))
    out = tmp_path / "bucket" / "reranker"
    cmd = [
        sys.executable, str(REPO / "examples" / "training_reranker.py"), "--model", str(model_dir),
        "--data-dir", str(data_dir), "--max-train-pairs", "16", "--num-negatives", "3", "--max-steps", "2",
        "--batch-size", "4", "--max-length", "64", "--rerank-k", "4", "--max-eval-queries", "2",
        "--eval-dirs", str(data_dir / "dbpedia-entity"),  # evaluated beside DIR/msmarco
        "--output", f"file://{out}",  # a URL, as tpu/run_all.py passes gs://...: written locally, then uploaded
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false", **launch_py_environment())
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    # Under CROSSJAX_DISTRIBUTED=1 the example must join jax.distributed before anything starts JAX's backend.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train: 2 steps" in result.stdout
    assert "mean_ndcg@10: before" in result.stdout
    assert "on ['msmarco', 'dbpedia-entity']" in result.stderr  # the BEIR evaluator's log line
    assert f"Model exported to file://{out}/final" in result.stdout and not (tmp_path / "file:").exists()
    _, info = AutoModelForSequenceClassification.from_pretrained(out / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_the_reranker_example_refuses_a_folder_that_is_no_beir_folder_before_any_work(minilm_dir, tmp_path):
    """A wrong --eval-dirs folder is one line on stderr, before mining negatives and loading the model."""
    data_dir = shared_data()
    cmd = [
        sys.executable, str(REPO / "examples" / "training_reranker.py"), "--model", str(tmp_path / "no-model"),
        "--data-dir", str(data_dir), "--eval-dirs", str(data_dir / "mrpc"), "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]  # (after the example's INFO log lines)
    assert line.startswith("training_reranker.py: error: ") and str(data_dir / "mrpc") in line, line
    assert "Traceback" not in result.stderr and "Training data" not in result.stdout  # nothing mined


def launch_py_environment() -> dict[str, str]:
    """What tpu/launch.py runs an example with (CROSSJAX_DISTRIBUTED=1), plus a one-task SLURM job for JAX to
    detect on CPU in place of the TPU metadata, its coordinator on a free port."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    return {
        "CROSSJAX_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "SLURM_JOB_ID": "1",
        "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "localhost",
    }  # fmt: skip


# --------------------------------------------------------------------------- examples/_common.py's fit_and_report


@pytest.fixture(scope="module")
def examples_common():
    """examples/_common.py under a name of its own (tpu/ has a _common.py too)."""
    spec = importlib.util.spec_from_file_location("examples_common", REPO / "examples" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model_dir(minilm_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    return save_tiny_bert(tmp_path_factory.mktemp("tiny"), AutoTokenizer.from_pretrained(minilm_dir))


class ScriptedEvaluator:
    """Gives ``scores`` in turn; notes what ``watched``/model.safetensors held when each evaluation began."""

    primary_metric = "dev_score"

    def __init__(self, scores: list[float], watched: Path) -> None:
        self.scores, self.watched, self.seen = scores, watched, []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
        weights = self.watched / "model.safetensors"
        self.seen.append(hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None)
        return {self.primary_metric: self.scores[len(self.seen) - 1]}


def fit_and_report(common, model_dir: Path, output: str, evaluator, checkpoint_path: str | None = None) -> dict:
    """_common.fit_and_report on 8 pairs in 2 steps, evaluated after each step and at the epoch's end."""
    from crossjax import CrossEncoder, DataLoader, InputExample

    model = CrossEncoder(str(model_dir), num_labels=1, max_length=32, seed=0)
    pairs = [InputExample(texts=[f"question {i}", f"answer number {i}"], label=float(i % 2)) for i in range(8)]
    args = argparse.Namespace(
        epochs=1, warmup_ratio=0.1, evaluation_steps=1, lr=2e-5, output=output, use_amp=False,
        no_progress_bar=True, seed=0, checkpoint_path=checkpoint_path, checkpoint_save_steps=1,
    )  # fmt: skip
    return common.fit_and_report(args, model, DataLoader(pairs, batch_size=4), evaluator)


def test_a_url_output_gets_each_best_model_when_fit_saves_it(examples_common, tiny_model_dir, tmp_path, capsys):
    """A gs:// --output is written locally first; on a preemptible TPU VM that copy dies with the VM, and the run
    resumed from its checkpoints keeps the best score without saving that model again. So each new best model
    must reach the URL as soon as fit saves it, before the run goes on (file:// stands in for gs://)."""
    bucket = tmp_path / "bucket" / "run1"
    evaluator = ScriptedEvaluator([0.1, 0.3, 0.2], watched=bucket)  # bests at the 1st and 2nd evaluations
    summary = fit_and_report(examples_common, tiny_model_dir, f"file://{bucket}", evaluator)
    first_best, second_best = evaluator.seen[1], evaluator.seen[2]
    assert evaluator.seen[0] is None and first_best is not None  # the 1st best was uploaded before the 2nd step
    assert second_best not in (None, first_best)  # and the 2nd best replaced it before the 3rd evaluation
    assert summary["best_score"] == pytest.approx(0.3)
    assert (bucket / "config.json").is_file()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"Best dev dev_score: 0.3000; best model exported to file://{bucket}"


def test_a_run_relaunched_into_a_url_keeps_the_log_it_wrote_there(examples_common, tiny_model_dir, tmp_path, capsys):
    """A preempted VM's local copy of a gs:// --output is gone: the relaunched run (resuming from its checkpoints,
    here at the end of the run) starts from what the URL holds, so its upload keeps the earlier steps' log lines
    instead of replacing the URL's metrics.jsonl with the resumed part alone (file:// stands in for gs://)."""
    bucket, checkpoints = tmp_path / "bucket" / "run", str(tmp_path / "checkpoints")
    url = f"file://{bucket}"
    fit_and_report(examples_common, tiny_model_dir, url, ScriptedEvaluator([0.1, 0.3, 0.2], bucket), checkpoints)
    logged = (bucket / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in logged if '"loss"' in line]) == 2  # a line for each of the 2 steps
    capsys.readouterr()
    fit_and_report(examples_common, tiny_model_dir, url, ScriptedEvaluator([0.1], bucket), checkpoints)
    assert "fit: nothing left to train: the run's checkpoints end at its last step 2" in capsys.readouterr().out
    assert (bucket / "metrics.jsonl").read_text().splitlines()[: len(logged)] == logged
    assert (bucket / "config.json").is_file()


@pytest.mark.parametrize("case", ["no finite score", "no model saved"])
def test_the_last_line_says_plainly_when_no_model_was_saved(
    case, examples_common, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """fit's best_score is None when no evaluation gave a finite score (e.g. a correlation of constant dev scores):
    fit then saves the final model, and the line says which; a finite best score may have no model in --output (a
    resumed run whose earlier model was lost): no export is claimed (nor formatting None failed)."""
    out = tmp_path / "out"
    scores = [math.nan] * 3 if case == "no finite score" else [0.5, 0.4, 0.3]
    if case == "no model saved":
        from crossjax import CrossEncoder

        monkeypatch.setattr(CrossEncoder, "save", lambda self, path, *args, **kwargs: None)
    summary = fit_and_report(examples_common, tiny_model_dir, str(out), ScriptedEvaluator(scores, watched=out))
    last = capsys.readouterr().out.splitlines()[-1]
    assert (out / "config.json").exists() == (case == "no finite score")
    if case == "no finite score":
        assert summary["best_score"] is None
        expected = f"Best dev dev_score: none (no evaluation gave a finite score); the final model was saved to {out}"
    else:
        expected = f"Best dev dev_score: 0.5000; but no model was saved to {out} (see the warnings above)"
    assert last == expected
