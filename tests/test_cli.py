# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
"""The ``crossjax`` command line: ``predict`` in a fresh process equals ``CrossEncoder.predict`` exactly; bad
arguments and files end with exit code 2 and one line on stderr; rank, eval, export and train do what the
library does (the oracle: the same library calls made directly)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, read_stsb
from test_fit_behaviour import tiny_dir, tiny_dirs  # noqa: F401 - fixtures used by name

from crossjax import CrossEncoder, cli
from crossjax.evaluation import CECorrelationEvaluator, CrossEncoderClassificationEvaluator
from crossjax.pair_files import PairFileError, read_pairs


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m crossjax ARGS`` in a fresh process, with this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "crossjax", *args], capture_output=True, text=True, env=env, timeout=300
    )


def write_tsv(path, header, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        f.writelines("\t".join(str(v) for v in row) + "\n" for row in rows)
    return str(path)


@pytest.fixture(scope="module")
def stsb_rows():
    return read_stsb("dev", limit=48)


def test_predict_in_a_subprocess_equals_cross_encoder_predict(tiny_dir, stsb_rows, tmp_path):
    pairs = [(a, b) for a, b, _ in stsb_rows]
    source = write_tsv(tmp_path / "pairs.tsv", ["sentence1", "sentence2", "score"], stsb_rows)
    output = tmp_path / "scores.tsv"
    done = run_cli(
        "predict", "--model", str(tiny_dir), "--input", source, "--output", str(output), "--batch-size", "16"
    )
    assert done.returncode == 0, done.stderr
    lines = output.read_text().splitlines()
    assert lines[0] == "score" and len(lines) == len(pairs) + 1
    scores = np.array([np.float32(line) for line in lines[1:]], dtype=np.float32)
    expected = CrossEncoder(tiny_dir).predict(pairs, batch_size=16)
    np.testing.assert_array_equal(scores, expected)  # bit for bit: same program, same packing, 9 digits written


def test_pair_files_in_tsv_csv_and_jsonl_read_the_same(tmp_path):
    rows = [('He said "hi".', "b, with a comma", 0.5), ("x", "y", 1.0)]
    tsv = write_tsv(tmp_path / "p.tsv", ["query", "document", "label"], rows)
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["query", "document", "label"], *rows])
    with open(tmp_path / "p.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"query": a, "document": b, "label": s}) + "\n\n" for a, b, s in rows)
    with open(tmp_path / "bare.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    tables = [read_pairs(p, need_label=True) for p in (tsv, tmp_path / "p.csv", tmp_path / "p.jsonl")]
    tables.append(read_pairs(tmp_path / "bare.csv", header=False, need_label=True))
    # read with a header row, its first data row becomes the "columns": the error points at --no-header too
    with pytest.raises(PairFileError, match=r"name it with --label-column \(or, if the first row is data, not a "):
        read_pairs(tmp_path / "bare.csv", need_label=True)
    (tmp_path / "nolabel.jsonl").write_text('{"query": "a", "doc": "b"}\n')  # JSONL has keys, not a header row
    with pytest.raises(PairFileError, match=r"name it with --label-column\); the columns are \['query', 'doc'\]"):
        read_pairs(tmp_path / "nolabel.jsonl", need_label=True)
    for table in tables:
        assert table.pairs == [(a, b) for a, b, _ in rows] and table.labels == [0.5, 1.0]
    # MRPC's layout: columns taken by position that hold ids were scored as texts, silently
    rows = [(1, 702876, 702977, "He said so.", "So he said."), (0, 2108705, 2108831, "A b.", "C d.")]
    mrpc = write_tsv(tmp_path / "mrpc.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], rows)
    with pytest.raises(PairFileError, match=r"column 'Quality', taken as a text column .* holds only numbers"):
        read_pairs(mrpc)
    with pytest.raises(PairFileError, match=r"column '#1 ID', taken as a text column"):
        read_pairs(mrpc, label_column="Quality")
    assert read_pairs(mrpc, columns=("#1 String", "#2 String")).pairs == [r[3:] for r in rows]
    (tmp_path / "bool.jsonl").write_text('{"a": "x", "b": "y", "label": true}\n{"a": "z", "b": "w", "label": false}\n')
    assert read_pairs(tmp_path / "bool.jsonl", need_label=True).labels == [1.0, 0.0]  # JSON's booleans
    nan = write_tsv(tmp_path / "nan.tsv", ["a", "b", "label"], [("x", "y", 1), ("z", "w", "nan")])
    with pytest.raises(PairFileError, match=r"nan.tsv:3: label 'nan' is not a finite number"):
        read_pairs(nan, need_label=True)


BAD_ARGUMENTS = {
    "missing input file": (["predict", "--model", "{model}", "--input", "{tmp}/nope.tsv"], "does not exist"),
    "bad extension": (["predict", "--model", "{model}", "--input", "{tmp}/pairs.txt"], "unsupported extension"),
    "missing column": (["predict", "--model", "{model}", "--input", "{tmp}/pairs.tsv", "--columns", "q,d"], "'q'"),
    "unknown evaluator": (["eval", "--model", "{model}", "--evaluator", "bleu", "--data", "{tmp}/pairs.tsv"], "bleu"),
    "missing model folder": (["predict", "--model", "{tmp}/no-model", "--input", "{tmp}/pairs.tsv"], "no-model"),
    "no label to evaluate": (
        ["eval", "--model", "{model}", "--evaluator", "correlation", "--data", "{tmp}/pairs.tsv"],
        "no label column",
    ),
    "malformed jsonl": (["predict", "--model", "{model}", "--input", "{tmp}/bad.jsonl"], "bad.jsonl:2"),
    "unknown config key": (["train", "--config", "{tmp}/config.json"], "unknown key 'epoch'"),
    "a config list for a one-value flag": (
        ["train", "--config", "{tmp}/batch_list.yaml"],
        "batch_size takes one value, got the list [8, 16]",
    ),
    "a config boolean in quotes": (
        ["train", "--config", "{tmp}/quoted.yaml"],
        "no_progress_bar must be true or false, got 'false' (a quoted string: write it unquoted)",
    ),
    "a config value of the wrong type": (
        ["train", "--config", "{tmp}/typed.yaml"],
        "--config {tmp}/typed.yaml: epochs: expected a positive integer, got 'two'",
    ),
    "a config list of column numbers": (
        ["train", "--config", "{tmp}/columns_list.yaml"],
        "columns must be a list of column names (strings), got [1, 2]",
    ),
    "missing required flag": (["predict", "--model", "{model}"], "--input"),
    "a folder of training checkpoints": (
        ["predict", "--model", "{tmp}/ckpt", "--input", "{tmp}/pairs.tsv"],
        "it holds crossjax training checkpoints: pass one step's folder, e.g. {tmp}/ckpt/7",
    ),
    "negative batch size": (
        ["predict", "--model", "{model}", "--input", "{tmp}/pairs.tsv", "--batch-size", "-3"],
        "positive integer",
    ),
    "a header naming a column twice": (
        ["predict", "--model", "{model}", "--input", "{tmp}/twice.tsv"],
        "names 'text' more than once",
    ),
    "a header column without a name": (["predict", "--model", "{model}", "--input", "{tmp}/blank.tsv"], "no name"),
    "dev labels that are not classes": (
        ["train", "--model", "{model}", "--train", "{tmp}/classes.tsv", "--dev", "{tmp}/fractions.tsv",
         "--num-labels", "3"],
        "fractions.tsv: pair 1 has label 0.7",
    ),  # fmt: skip
    "unlabelled pairs (-100) in dev data, where training data may hold them": (
        ["train", "--model", "{model}", "--train", "{tmp}/unlabelled.tsv", "--dev", "{tmp}/unlabelled.tsv",
         "--num-labels", "3"],
        "unlabelled.tsv: pair 2 has label -100; classification needs class indices 0, 1, ... (-100, torch's "
        "ignore_index, marks an unlabelled pair in training data only)",
    ),  # fmt: skip
    "a head of another size than the model's": (
        ["train", "--model", "{model}", "--train", "{tmp}/classes.tsv", "--num-labels", "3"],
        "--ignore-mismatched-sizes) to train a new head of that size",
    ),
    "a negative seed": (
        ["train", "--model", "{model}", "--train", "{tmp}/classes.tsv", "--seed", "-1"],
        "argument --seed: expected an integer in [0, 2**32), got '-1'",
    ),
    "a warm-up ratio that is not a fraction": (
        ["train", "--model", "{model}", "--train", "{tmp}/classes.tsv", "--warmup-ratio", "nan"],
        "--warmup-ratio must be a fraction",
    ),
    "an output that is the input": (
        ["predict", "--model", "{model}", "--input", "{tmp}/pairs.tsv", "--output", "{tmp}/pairs.tsv"],
        "--output {tmp}/pairs.tsv is the --input file: the results would replace it",
    ),
    "an evaluation's output folder that is a file": (
        ["eval", "--model", "{model}", "--evaluator", "correlation", "--data", "{tmp}/classes.tsv", "--output",
         "{tmp}/pairs.tsv"],
        "--output {tmp}/pairs.tsv is a file; name a folder",
    ),  # fmt: skip
    "a config file that is not UTF-8": (["train", "--config", "{tmp}/latin1.yaml"], "latin1.yaml is not UTF-8"),
    "a JSON label beyond any float": (
        ["train", "--model", "{model}", "--train", "{tmp}/huge.jsonl"],
        "huge.jsonl:1: label 10000000000000000000... is too large for a float",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_exit_2_with_one_line(case, tiny_dir, tmp_path):
    write_tsv(tmp_path / "pairs.tsv", ["a", "b"], [("x", "y")])
    (tmp_path / "pairs.txt").write_text("x\ty\n")
    (tmp_path / "bad.jsonl").write_text('{"a": "x", "b": "y"}\n{"a": "x", \n')
    (tmp_path / "config.json").write_text(json.dumps({"epoch": 2}))
    (tmp_path / "batch_list.yaml").write_text(f"model: {tiny_dir}\ntrain: pairs.tsv\nbatch_size: [8, 16]\n")
    (tmp_path / "columns_list.yaml").write_text(f"model: {tiny_dir}\ntrain: pairs.tsv\ncolumns: [1, 2]\n")
    (tmp_path / "typed.yaml").write_text(f"model: {tiny_dir}\ntrain: pairs.tsv\nepochs: two\n")
    (tmp_path / "quoted.yaml").write_text(f'model: {tiny_dir}\ntrain: pairs.tsv\nno_progress_bar: "false"\n')
    write_tsv(tmp_path / "twice.tsv", ["text", "text", "label"], [("x", "y", 1)])
    (tmp_path / "blank.tsv").write_text("\t\tlabel\nx\ty\t1\n")
    write_tsv(tmp_path / "classes.tsv", ["a", "b", "label"], [("x", "y", 0), ("z", "w", 2)])
    write_tsv(tmp_path / "fractions.tsv", ["a", "b", "label"], [("x", "y", 0.7), ("z", "w", 2)])
    write_tsv(tmp_path / "unlabelled.tsv", ["a", "b", "label"], [("x", "y", 0), ("z", "w", -100)])
    (tmp_path / "latin1.yaml").write_bytes("model: caf\xe9\n".encode("latin-1"))
    (tmp_path / "huge.jsonl").write_text('{"a": "x", "b": "y", "label": 1' + "0" * 400 + "}\n")
    (tmp_path / "ckpt" / "7" / "state").mkdir(parents=True)
    (tmp_path / "ckpt" / "7" / "model").mkdir()
    args, expected = BAD_ARGUMENTS[case]
    done = run_cli(*(a.format(model=tiny_dir, tmp=tmp_path) for a in args))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("crossjax") and expected.format(tmp=tmp_path) in done.stderr, done.stderr
    assert done.stdout == ""


def test_rank_and_eval_print_what_the_library_computes(tiny_dir, stsb_rows, tmp_path, capsys):
    model = CrossEncoder(tiny_dir)
    documents = sorted({b for _, b, _ in stsb_rows[:12]})
    (tmp_path / "docs.txt").write_text("\n".join(documents) + "\n")
    query = stsb_rows[0][0]
    assert cli.main(["rank", "--model", str(tiny_dir), "--query", query, "--documents", str(tmp_path / "docs.txt"),
                     "--top-k", "5", "--no-progress-bar"]) == 0  # fmt: skip
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    expected = model.rank(query, documents, top_k=5)
    assert [int(row[1]) for row in printed] == [hit["corpus_id"] for hit in expected]
    assert [np.float32(row[2]) for row in printed] == [np.float32(hit["score"]) for hit in expected]
    # A training checkpoint's step folder (orbax's state beside the step's model) is a model to the commands
    step = tmp_path / "checkpoints" / "12"
    (step / "state").mkdir(parents=True)
    shutil.copytree(tiny_dir, step / "model")
    assert cli.main(["rank", "--model", str(step), "--query", query, "--documents", str(tmp_path / "docs.txt"),
                     "--top-k", "5", "--no-progress-bar"]) == 0  # fmt: skip
    assert [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]] == printed

    data = write_tsv(tmp_path / "dev.tsv", ["sentence1", "sentence2", "score"], stsb_rows)
    assert cli.main(["eval", "--model", str(tiny_dir), "--evaluator", "correlation", "--data", data,
                     "--no-progress-bar"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    pairs, scores = [[a, b] for a, b, _ in stsb_rows], [s for _, _, s in stsb_rows]
    assert metrics == CECorrelationEvaluator(pairs, scores, name="dev")(model)

    # Constant labels have no correlation (NaN): strict JSON prints null, as parsers refuse NaN
    header = ["sentence1", "sentence2", "score"]
    constant = write_tsv(tmp_path / "constant.tsv", header, [(a, b, 1.0) for a, b in pairs])
    assert cli.main(["eval", "--model", str(tiny_dir), "--evaluator", "correlation", "--data", constant,
                     "--no-progress-bar"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert metrics["constant_pearson"] is None and metrics["constant_spearman"] is None
    assert np.isnan(CECorrelationEvaluator(pairs, [1.0] * len(pairs), name="constant")(model)["constant_pearson"])

    labels = [int(s >= 2.5) for s in scores]
    rows = [(a, b, y) for (a, b), y in zip(pairs, labels, strict=True)]
    binary = write_tsv(tmp_path / "binary.tsv", ["text_a", "text_b", "label"], rows)
    assert cli.main(["eval", "--model", str(tiny_dir), "--evaluator", "binary", "--data", binary, "--name", "b"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == CrossEncoderClassificationEvaluator(pairs, labels, name="b")(model)


def test_export_saves_and_writes_onnx(tiny_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "export"
    assert cli.main(["export", "--model", str(tiny_dir), "--output", str(out), "--onnx"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "onnx" / "model.onnx").is_file()
    assert "onnx/model.onnx" in capsys.readouterr().out
    # An opset the export cannot write stops before the model is saved (it was saved, then the opset refused).
    unwritten = tmp_path / "unwritten"
    assert cli.main(["export", "--model", str(tiny_dir), "--output", str(unwritten), "--onnx", "--opset", "16"]) == 2
    assert "opset must be an integer >= 17" in capsys.readouterr().err and not unwritten.exists()


def test_train_from_a_yaml_config_with_a_flag_overriding_it(tiny_dir, stsb_rows, tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", ["sentence1", "sentence2", "score"],
                      [(a, b, s / 5) for a, b, s in stsb_rows[:8]])  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_dir}\ntrain: {train}\nbatch_size: 8\nepochs: 3\nlr: 1.0e-3\nwarmup_ratio: 0\n"
        f"no_progress_bar: true\noutput: {tmp_path / 'out'}\n"
    )
    assert cli.main(["train", "--config", str(config), "--epochs", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == 1  # 8 pairs / batch 8, one epoch: the flag wins over the file's 3 epochs
    from safetensors.numpy import load_file

    before, after = load_file(tiny_dir / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    assert not np.array_equal(before["classifier.weight"], after["classifier.weight"])  # it trained and saved


def test_help_explains_every_flag_of_every_command(capsys):
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert sorted(commands) == ["eval", "export", "predict", "rank", "train"]
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"crossjax {name} {action.option_strings}: no help text"
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        assert "Pair files:" in capsys.readouterr().out  # the input format is stated in every command's help


def test_eval_beir_folder_equals_the_evaluator(tiny_dir, capsys):
    """Runs once crossjax.evaluation.beir (another branch) is merged; until then there is nothing to wire."""
    beir = pytest.importorskip("crossjax.evaluation.beir")
    from conftest import shared_data

    folder = shared_data("msmarco")
    args = ["--rerank-k", "8", "--max-queries", "3", "--at-k", "5"]
    assert cli.main(["eval", "--model", str(tiny_dir), "--evaluator", "beir", "--data", str(folder), *args,
                     "--no-progress-bar"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    expected = beir.CrossEncoderBEIREvaluator(folder, rerank_k=8, max_queries=3, at_k=5)(CrossEncoder(tiny_dir))
    assert metrics == expected and any(key.endswith("ndcg@5") for key in metrics)


def test_predict_leaves_the_named_label_column_out_of_the_texts(tiny_dir, stsb_rows, tmp_path, capsys):
    """A file of (rating, question, answer) with ``--label-column rating`` scores (question, answer)."""
    rows = [(int(score) if i % 3 else "n/a", a, b) for i, (a, b, score) in enumerate(stsb_rows[:8])]  # unread
    source = write_tsv(tmp_path / "rated.tsv", ["rating", "question", "answer"], rows)
    output = tmp_path / "scores.tsv"
    assert cli.main(["predict", "--model", str(tiny_dir), "--input", source, "--label-column", "rating",
                     "--output", str(output), "--no-progress-bar"]) == 0  # fmt: skip
    scores = np.array([np.float32(line) for line in output.read_text().splitlines()[1:]], dtype=np.float32)
    np.testing.assert_array_equal(scores, CrossEncoder(tiny_dir).predict([(a, b) for _, a, b in rows]))


def test_a_reader_that_stops_early_ends_the_command_quietly(tiny_dir, tmp_path):
    """`crossjax predict ... | head -1`: the pipe closes while results are written; the command stops without
    an error message (it printed "error: [Errno 32] Broken pipe")."""
    pairs = write_tsv(tmp_path / "many.tsv", ["a", "b"], [(f"w{i % 50}", f"v{i % 7}") for i in range(20_000)])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "crossjax", "predict", "--model", str(tiny_dir), "--input", pairs,
               "--no-progress-bar"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert process.stdout.readline()  # the header: the scores follow, 20,000 lines, more than a pipe holds
    process.stdout.close()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and "error" not in stderr.lower() and "Traceback" not in stderr, stderr
