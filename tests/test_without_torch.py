"""crossjax trains, scores, evaluates, saves and mines without PyTorch: torch and sentence-transformers are test
oracles and an optional extra, never a runtime dependency. A fresh process where they cannot be found (as where
they are not installed: ``importlib.util.find_spec`` returns None, so transformers too sees no torch) runs the
whole legacy and trainer flow; the features that need torch refuse with the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO, save_tiny_bert

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = ("torch", "sentence_transformers", "accelerate", "torchvision")


    class Hidden:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            return None if name.split(".")[0] in BLOCKED else self.finder.find_spec(name, path, target)

        def __getattr__(self, attribute):
            return getattr(self.finder, attribute)


    sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
    import json
    from pathlib import Path

    import numpy as np
    from datasets import Dataset

    from crossjax import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments, DataLoader, InputExample
    from crossjax import cli, losses
    from crossjax.evaluation import CECorrelationEvaluator, CrossEncoderRerankingEvaluator
    from crossjax.onnx import export_onnx
    from crossjax.util import mine_hard_negatives

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    words = "apple river stone cloud music table green quick slow bright dark paper".split()
    rng = np.random.default_rng(0)
    text = lambda n: " ".join(rng.choice(words, size=n))
    pairs = [(text(3), text(6)) for _ in range(16)]
    labels = [float(x) for x in rng.uniform(0, 1, 16)]
    model = CrossEncoder(str(model_dir), num_labels=1)
    evaluator = CECorrelationEvaluator(pairs[:8], labels[:8])
    examples = [InputExample(texts=list(p), label=y) for p, y in zip(pairs, labels)]
    model.fit(DataLoader(examples, batch_size=4, shuffle=True), evaluator=evaluator, epochs=1, warmup_steps=1)
    scores = model.predict(pairs)
    ranked = model.rank(pairs[0][0], [b for _, b in pairs[:5]])
    model.save(str(out / "fit"))
    again = CrossEncoder(str(out / "fit"))
    assert np.array_equal(again.predict(pairs), scores)

    data = Dataset.from_dict({"q": [a for a, _ in pairs], "d": [b for _, b in pairs], "label": labels})
    args = CrossEncoderTrainingArguments(
        str(out / "trainer"), max_steps=2, per_device_train_batch_size=4, eval_strategy="steps", eval_steps=2,
        save_steps=2, disable_tqdm=True,
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, evaluator=evaluator,
        loss=losses.BinaryCrossEntropyLoss(model),
    )
    trainer.train()
    mined = mine_hard_negatives(data.select_columns(["q", "d"]), num_negatives=2, verbose=False)
    reranking = CrossEncoderRerankingEvaluator(
        [{"query": pairs[0][0], "positive": [pairs[0][1]], "negative": [b for _, b in pairs[1:4]]}]
    )(model)
    refusals = {}
    try:
        export_onnx(model, str(out / "onnx"))
    except ImportError as e:
        refusals["onnx"] = (str(e), (out / "onnx").exists())  # refused before writing anything
    code = cli.main(["export", "--model", str(out / "fit"), "--output", str(out / "cli_export"), "--onnx"])
    refusals["cli_export"] = (code, (out / "cli_export").exists())
    print(json.dumps({
        "torch": "torch" in sys.modules, "sentence_transformers": "sentence_transformers" in sys.modules,
        "scores": len(scores), "ranked": len(ranked), "mined": mined.num_rows,
        "checkpoint": sorted(p.name for p in (out / "trainer" / "checkpoints").iterdir()),
        "reranking": sorted(reranking), "refusals": refusals,
    }))
    """
)


def test_training_scoring_and_saving_run_where_torch_is_not_installed(tmp_path, minilm_dir):
    from transformers import AutoTokenizer

    model_dir = save_tiny_bert(tmp_path / "tiny", AutoTokenizer.from_pretrained(str(minilm_dir)), dropout=0.0)
    script = tmp_path / "without_torch.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(tmp_path)], capture_output=True, text=True, env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["sentence_transformers"] is False, report
    assert report["scores"] == 16 and report["ranked"] == 5 and report["mined"] > 0
    assert report["checkpoint"] == ["2"]  # the orbax step folder of output_dir/checkpoints
    assert any(key.endswith("ndcg@10") for key in report["reranking"]), report["reranking"]
    message, wrote = report["refusals"]["onnx"]
    assert "crossjax[torch]" in message and not wrote, report
    assert report["refusals"]["cli_export"] == [1, False], report  # refused before --output was written
    assert "crossjax[torch]" in done.stderr
