"""The model card (README.md) that ``save`` and ``fit`` write, on a tiny random BERT.

Oracles: ``huggingface_hub.ModelCard.load`` (the hub's own parser and metadata validation), the evaluator's
CSV file for every number of the card, sentence-transformers 6.2 and PyTorch transformers running the card's
usage snippets as written, crossjax's ``predict`` on the saved folder.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_fit_behaviour import _save_tiny, make_examples  # noqa: F401 (module fixture)

from crossjax import CrossEncoder, CrossEncoderModelCardData, DataLoader
from crossjax.evaluation import CECorrelationEvaluator
from crossjax.logs import CURVES_FILE
from crossjax.model_card import MODEL_ID_PLACEHOLDER

FAST = {"scheduler": "constantlr", "optimizer_params": {"lr": 1e-3}, "show_progress_bar": False}


@pytest.fixture(scope="module")
def tiny_dirs(minilm_dir, tmp_path_factory) -> dict[int, Path]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    return {n: _save_tiny(tmp_path_factory.mktemp(f"tiny_card{n}"), tokenizer, n) for n in (1, 3)}


@pytest.fixture(scope="module")
def trained(tiny_dirs, tmp_path_factory):
    """2 epochs of 4 steps (the data and batches of test_training_logs: compiled programs are shared)."""
    out = tmp_path_factory.mktemp("card") / "model"
    card_data = CrossEncoderModelCardData(
        language="en",
        license="apache-2.0",
        train_datasets=[{"name": "Toy pairs", "id": "someone/toy-pairs"}],
        base_model="someone/tiny-bert",
    )
    model = CrossEncoder(tiny_dirs[1], max_length=32, model_card_data=card_data)
    evaluator = CECorrelationEvaluator.from_input_examples(make_examples(12, seed=5), name="dev")
    summary = model.fit(
        DataLoader(make_examples(16, seed=3), batch_size=4, shuffle=True),
        evaluator=evaluator,
        epochs=2,
        evaluation_steps=2,
        logging_steps=3,
        output_path=str(out),
        **FAST,
    )
    return model, summary, out


def _csv_rows(out: Path) -> list[dict[str, float]]:
    with open(out / "CrossEncoderCorrelationEvaluator_dev_results.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _saved_row(out: Path) -> dict[str, float]:
    """The CSV row of the saved model: the first evaluation with the best Spearman (fit saves on improvement)."""
    rows = _csv_rows(out)
    best = max(r["Spearman_Correlation"] for r in rows)
    return next(r for r in rows if r["Spearman_Correlation"] == best)


def _section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of the same or a higher level (code blocks' comments are no headings)."""
    lines = text[text.index(heading) :].splitlines()
    level, in_code = heading.count("#"), False
    for i, line in enumerate(lines[1:], 1):
        in_code = in_code != line.lstrip().startswith("```")
        hashes = re.match(r"(#+) ", line)
        if not in_code and hashes and len(hashes.group(1)) <= level:
            return "\n".join(lines[:i])
    return "\n".join(lines)


def _table(section: str) -> list[dict[str, str]]:
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def _code_block(section: str) -> str:
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _number(cell: str) -> float:
    return float(cell.strip("*"))


def test_card_metadata_parses_with_huggingface_hub(trained):
    from huggingface_hub import ModelCard

    model, _, out = trained
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "sentence-transformers"
    assert data.pipeline_tag == "text-ranking"
    for tag in ("sentence-transformers", "cross-encoder", "reranker", "jax", "flax", "generated_from_trainer"):
        assert tag in data.tags
    assert "dataset_size:16" in data.tags  # sentence-transformers' tag of the training set's size
    # as sentence-transformers' card: no run-local settings among the hyperparameters (paths, logging, saving)
    hyperparameters = _section(card.text, "### Training Hyperparameters")
    for local in ("output_path", "log_dir", "evaluation_steps", "logging_steps", "show_progress_bar"):
        assert f"`{local}`" not in hyperparameters, local
    assert "`epochs`: 2" in hyperparameters
    assert data.base_model == "someone/tiny-bert"
    assert data.datasets == ["someone/toy-pairs"]
    assert data.language == ["en"] and data.license == "apache-2.0"
    assert data.metrics == ["pearson", "spearman"]
    saved = _saved_row(out)
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values == {"pearson": saved["Pearson_Correlation"], "spearman": saved["Spearman_Correlation"]}
    assert {r.dataset_type for r in data.eval_results} == {"dev"}


def test_every_number_of_the_evaluation_table_is_the_saved_models_csv_row(trained):
    _, summary, out = trained
    text = (out / "README.md").read_text()
    table = {row["Metric"].strip("*"): row["Value"] for row in _table(_section(text, "## Evaluation"))}
    saved = _saved_row(out)
    assert set(table) == {"pearson", "spearman"}
    assert _number(table["pearson"]) == round(saved["Pearson_Correlation"], 4)
    assert _number(table["spearman"]) == round(saved["Spearman_Correlation"], 4)
    assert table["spearman"].startswith("**")  # the primary metric, in bold as sentence-transformers marks it
    assert saved["Spearman_Correlation"] == pytest.approx(summary["best_score"])


def test_training_log_table_marks_the_saved_step_and_the_card_embeds_the_curves(trained):
    model, _, out = trained
    text = (out / "README.md").read_text()
    logs = _section(text, "### Training Logs")
    assert f"]({CURVES_FILE})" in logs and (out / CURVES_FILE).is_file()
    rows = _table(logs)
    assert [int(r["Step"].strip("*")) for r in rows] == [2, 3, 4, 6, 8]  # evaluations, every 3rd step, the end
    bold = [r for r in rows if r["Step"].startswith("**")]
    saved = _saved_row(out)
    assert len(bold) == 1 and _number(bold[0]["dev_spearman"]) == round(saved["Spearman_Correlation"], 4)
    # Hugging Face's logged loss: the mean since the previous logging step (3, 6, the end); "-" on rows that only
    # evaluate (steps 2 and 4)
    losses = [h["loss"] for h in model.training_history]
    assert [r["Training Loss"].strip("*") for r in rows[::2]] == ["-", "-", format(np.mean(losses[6:8]), ".4f")]
    assert _number(rows[1]["Training Loss"]) == round(float(np.mean(losses[0:3])), 4)
    assert _number(rows[3]["Training Loss"]) == round(float(np.mean(losses[3:6])), 4)
    details = _section(text, "## Training Details")
    assert "* Size: 16 training samples" in details
    assert "- `learning_rate`: 0.001" in _section(details, "#### Non-Default Hyperparameters")
    # fit's default loss named as sentence-transformers' fit names it: the BinaryCrossEntropyLoss it trains with,
    # its settings as that class's get_config_dict gives them (the oracle), and its tag
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss as STBinaryCrossEntropyLoss

    loss_line = details[details.index("* Loss:") :]
    assert loss_line.startswith("* Loss: <code>crossjax.losses.pointwise_st.BinaryCrossEntropyLoss</code>")
    shown = json.loads(loss_line.split("```json")[1].split("```")[0])
    assert shown == STBinaryCrossEntropyLoss(STCrossEncoder(str(out))).get_config_dict()
    from huggingface_hub import ModelCard

    assert "loss:BinaryCrossEntropyLoss" in ModelCard.load(out / "README.md").data.tags
    for version in ("crossjax", "JAX", "Flax", "Optax", "Transformers", "Tokenizers", "Python"):
        assert f"- {version}: " in text


def test_usage_snippets_run_as_written_and_print_crossjaxs_scores(trained):
    _, _, out = trained
    text = (out / "README.md").read_text()
    assert str(out.resolve()) not in text and str(out) not in text  # no local path travels with the card
    # sentence-transformers' placeholder until the model has a hub id; a user pasting the snippet puts a name there
    st_code = _code_block(_section(text, "### Direct Usage (Sentence Transformers)"))
    assert f'CrossEncoder("{MODEL_ID_PLACEHOLDER}")' in st_code
    st_code = st_code.replace(MODEL_ID_PLACEHOLDER, str(out))
    st_scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(st_code, st_scope)  # noqa: S102 - the card's snippet, as a user would paste it
    pairs = st_scope["pairs"]
    saved = CrossEncoder(out)
    ours = saved.predict(pairs, show_progress_bar=False)
    np.testing.assert_allclose(st_scope["scores"], ours, atol=1e-5)
    printed = re.search(r"print\(scores\)\n# \[(.*?)\]", st_code, re.S).group(1)
    np.testing.assert_allclose([float(x) for x in printed.split()], ours, atol=1e-4)  # printed with 4 decimals
    ranked = saved.rank(pairs[0][0], [b for _, b in pairs])  # the snippet ranks every answer for the first query
    assert [r["corpus_id"] for r in st_scope["ranks"]] == [r["corpus_id"] for r in ranked]
    np.testing.assert_allclose([r["score"] for r in st_scope["ranks"]], [r["score"] for r in ranked], atol=1e-5)

    hf_scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        hf_code = _code_block(_section(text, "### Direct Usage (Transformers)"))
        exec(hf_code.replace(MODEL_ID_PLACEHOLDER, str(out)), hf_scope)  # noqa: S102
    np.testing.assert_allclose(hf_scope["scores"].numpy().reshape(-1), ours, atol=1e-5)
    printed_jax = io.StringIO()
    with contextlib.redirect_stdout(printed_jax):
        jax_code = _code_block(_section(text, "### Direct Usage (crossjax"))
        exec(jax_code.replace(MODEL_ID_PLACEHOLDER, str(out)), {})  # noqa: S102
    assert printed_jax.getvalue().startswith("[")


def test_model_card_data_overrides_and_an_untrained_classifier(tiny_dirs, tmp_path):
    from huggingface_hub import ModelCard
    from sentence_transformers.cross_encoder.model_card import CrossEncoderModelCardData as STCardData

    st_data = STCardData(model_id="someone/nli-head", license="mit", local_files_only=True)  # their class
    model = CrossEncoder(tiny_dirs[3], max_length=32, model_card_data=st_data)
    out = model.save(tmp_path / "classifier")
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.license == "mit"
    from sentence_transformers import CrossEncoder as STCrossEncoder

    st_folder = tmp_path / "st-classifier"
    STCrossEncoder(str(tiny_dirs[3]), device="cpu").save(str(st_folder))
    st_tags = ModelCard.load(st_folder / "README.md").data.tags
    assert ("reranker" in card.data.tags) == ("reranker" in st_tags)  # 6.2 tags every cross-encoder one
    assert "generated_from_trainer" not in card.data.tags
    assert card.data.eval_results is None
    assert 'CrossEncoder("someone/nli-head")' in card.text  # the hub id, not the local folder
    assert "## Training Details" not in card.text
    code = _code_block(_section(card.text, "### Direct Usage (Sentence Transformers)"))
    pairs = ast.literal_eval(re.search(r"pairs = (\[.*?\n\])", code, re.S).group(1))
    printed = re.search(r"print\(scores\)\n((?:# .*\n?)+)", code).group(1)
    values = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", printed)]
    expected = model.predict(pairs, show_progress_bar=False)
    np.testing.assert_allclose(np.reshape(values, expected.shape), expected, atol=1e-4)
    # sentence-transformers' setters, on both classes
    for data in (model.model_card_data, st_data):
        data.set_language("en")
        data.set_license("apache-2.0")
    assert model.model_card_data.language == st_data.language == ["en"]
    assert model.model_card_data.license == st_data.license == "apache-2.0"
    assert model.model_card_data.set_base_model("org/base", revision="v1")
    model.save(tmp_path / "based")
    assert "[org/base](https://huggingface.co/org/base) <!-- at revision v1 -->" in (
        tmp_path / "based" / "README.md"
    ).read_text()


def test_bad_model_card_data_is_refused_with_a_clear_error(tiny_dirs):
    with pytest.raises(TypeError, match="model_card_data must be a CrossEncoderModelCardData"):
        CrossEncoder(tiny_dirs[1], model_card_data=42)
    with pytest.raises(ValueError, match="must be a hub id"):
        CrossEncoderModelCardData(model_id="no-organization")
    with pytest.raises(ValueError, match="train_datasets entries"):
        CrossEncoderModelCardData(train_datasets=["stsb"])
    # values that would leave a save without its README.md (the card's metadata cannot hold them)
    for bad in ({"language": 5}, {"language": ["en", None]}, {"tags": [3]}, {"license": ["mit"]}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CrossEncoder(tiny_dirs[1], model_card_data=bad)
    theirs = pytest.importorskip("sentence_transformers.cross_encoder").CrossEncoderModelCardData
    assert CrossEncoderModelCardData().language == theirs().language == []  # the default, as there


def test_a_loaded_card_is_kept_until_the_model_trains_and_a_later_save_marks_no_step_it_does_not_hold(
    trained, tmp_path
):
    """sentence-transformers 6.2 saves a loaded, untrained model with the card it came with; crossjax does too,
    the snippets naming sentence-transformers' placeholder in both. The model in memory after fit is the last
    step's: saved again, its card bolds no other step (the best one went to output_path)."""
    from sentence_transformers import CrossEncoder as STCrossEncoder

    model, _, out = trained
    original = (out / "README.md").read_text()
    STCrossEncoder(str(out)).save(str(tmp_path / "st"))
    assert (tmp_path / "st" / "README.md").read_text() == original  # the oracle keeps it as it was
    copy = CrossEncoder(out).save(tmp_path / "copy")
    assert (copy / "README.md").read_text() == original  # as sentence-transformers: no folder named in either
    assert f"]({CURVES_FILE})" in original and (copy / CURVES_FILE).read_bytes() == (out / CURVES_FILE).read_bytes()
    # a trainer made for a model tags it, as sentence-transformers' does: its card is generated anew
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs

    from crossjax import CrossEncoderTrainer, CrossEncoderTrainingArguments

    st_model = STCrossEncoder(str(out))
    STTrainer(model=st_model, args=STArgs(str(tmp_path / "st_run"), report_to="none", use_cpu=True))
    st_model.save(str(tmp_path / "st_trainer"))
    assert (tmp_path / "st_trainer" / "README.md").read_text() != original
    given_a_trainer = CrossEncoder(out)
    CrossEncoderTrainer(model=given_a_trainer, args=CrossEncoderTrainingArguments(str(tmp_path / "run")))
    assert (given_a_trainer.save(tmp_path / "trainer") / "README.md").read_text() != original
    retrained = CrossEncoder(out, max_length=32)
    retrained.fit(DataLoader(make_examples(8, seed=1), batch_size=4), epochs=1, **FAST)
    assert (retrained.save(tmp_path / "retrained") / "README.md").read_text() != original

    def bold_steps(card: str) -> list[int]:
        return [int(r["Step"].strip("*")) for r in _table(_section(card, "### Training Logs")) if "**" in r["Step"]]

    last_step = model.training_history[-1]["step"]
    assert bold_steps(original) == [2] != [last_step]  # the fixture's best model is step 2's, not the last
    final = (model.save(tmp_path / "final") / "README.md").read_text()
    assert bold_steps(final) == []


def test_transformers_snippet_applies_the_default_prompt(tiny_dirs, tmp_path):
    model = CrossEncoder(tiny_dirs[1], max_length=32, prompts={"query": "query: "}, default_prompt_name="query")
    out = model.save(tmp_path / 'my "q" model')
    text = (out / "README.md").read_text()
    scopes = {}
    for heading in ("### Direct Usage (Sentence Transformers)", "### Direct Usage (Transformers)"):
        scopes[heading] = {}
        code = _code_block(_section(text, heading)).replace(f'"{MODEL_ID_PLACEHOLDER}"', repr(str(out)))
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, scopes[heading])  # noqa: S102 - as a user pastes it, naming the folder
    st, hf = scopes.values()
    expected = model.predict(st["pairs"], show_progress_bar=False)
    assert not np.allclose(expected, model.predict(st["pairs"], prompt="", show_progress_bar=False), atol=1e-4)
    np.testing.assert_allclose(st["scores"], expected, atol=1e-5)
    np.testing.assert_allclose(hf["scores"].numpy().reshape(-1), expected, atol=1e-5)


def test_training_log_table_shows_the_validation_loss_as_sentence_transformers_names_it():
    from crossjax.model_card import TrainingRecord, training_log_table

    history = [{"step": s, "epoch": 0, "loss": float(s)} for s in (1, 2, 3, 4)]
    one = TrainingRecord(log_history=[*history, {"step": 2, "epoch": 0, "eval_loss": 0.5}], logging_steps=2)
    rows = _table(training_log_table(one, {}))
    assert [(r["Step"], r["Training Loss"], r["Validation Loss"]) for r in rows] == [
        ("2", "1.5", "0.5"),
        ("4", "3.5", "-"),
    ]
    two = TrainingRecord(
        log_history=[*history, {"step": 3, "epoch": 0, "eval_nli_loss": 0.25, "eval_sts_loss": 0.75}], logging_steps=2
    )
    rows = _table(training_log_table(two, {}))
    assert [(r["Step"], r["Training Loss"], r["nli loss"], r["sts loss"]) for r in rows] == [
        ("2", "1.5", "-", "-"),
        ("3", "-", "0.25", "0.75"),
        ("4", "3.5", "-", "-"),
    ]


def test_a_local_path_under_home_is_no_base_model(tiny_dirs, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_dirs[1], tmp_path / "tiny")
    assert CrossEncoder("~/tiny").model_card_data.base_model is None


def test_a_reranking_evaluation_of_first_stage_documents_is_in_the_model_index_as_sentence_transformers(
    tiny_dirs, tmp_path
):
    """With ranked ``documents`` the reranking evaluator's card metrics are strings such as "0.8155 (+0.0123)"
    (the value and the change from the first-stage order): sentence-transformers puts their numbers in the
    model-index and every metric in ``metrics``; crossjax dropped them (a probe found it)."""
    from huggingface_hub import ModelCard
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as STReranking

    from crossjax.evaluation import CrossEncoderRerankingEvaluator

    samples = [
        {"query": "a cat", "positive": ["a cat sits"], "documents": ["rain today", "a cat sits", "dogs run"]},
        {"query": "the rain", "positive": ["rain today"], "documents": ["rain today", "a cat sits", "dogs run"]},
    ]
    cards = {}
    for name, model, evaluator in (
        ("crossjax", CrossEncoder(str(tiny_dirs[1])), CrossEncoderRerankingEvaluator),
        ("sentence-transformers", STCrossEncoder(str(tiny_dirs[1]), device="cpu"), STReranking),
    ):
        evaluator(samples, name="rr")(model)
        model.save(str(tmp_path / name))
        cards[name] = ModelCard.load(tmp_path / name / "README.md").data
    ours, theirs = cards["crossjax"], cards["sentence-transformers"]
    assert ours.metrics == theirs.metrics and "ndcg@10" in ours.metrics
    index = {(r.task_type, r.metric_type): r.metric_value for r in ours.eval_results}
    assert index.keys() == {(r.task_type, r.metric_type) for r in theirs.eval_results}
    assert ("cross-encoder-reranking", "ndcg@10") in index
    for result in theirs.eval_results:  # the same tiny model in both: scores equal to float32 round-off
        assert index[(result.task_type, result.metric_type)] == pytest.approx(result.metric_value, abs=1e-4)
