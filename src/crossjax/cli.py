"""``crossjax``: train, predict, rank, evaluate and export cross-encoders from the command line.

Arguments and input files are checked before anything heavy (JAX, the model) is loaded. A bad argument or an
unreadable or malformed file ends the command with exit code 2 and one line on stderr; progress bars go to
stderr, results to stdout or ``--output``. ``CROSSJAX_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from crossjax import step_folders
from crossjax.data import checked_seed
from crossjax.pair_files import EXTENSIONS, PairFileError, PairTable, read_documents, read_pairs

PAIR_FORMAT = (
    "Pair files: .tsv (tab-separated, no quoting), .csv (comma-separated) or .jsonl (one JSON object a line), "
    "UTF-8. TSV/CSV start with a header row. The two texts are the columns named by --columns A,B, else the "
    "first known pair of names (text_a/text_b, sentence1/sentence2, query/document, query/passage, "
    "premise/hypothesis, question1/question2, ...), else the first two non-label columns. The label is "
    "--label-column, else 'label', 'labels' or 'score'. --no-header: no header row, columns are text_a, text_b "
    "[, label]."
)
EVALUATORS = {
    "correlation": "Pearson/Spearman of the scores against float labels (CrossEncoderCorrelationEvaluator)",
    "classification": "best-threshold accuracy/F1/AP for 1 label, macro/micro F1 otherwise "
    "(CrossEncoderClassificationEvaluator); binary, softmax and f1 are its other names",
    "binary": "= classification (CEBinaryClassificationEvaluator)",
    "softmax": "= classification (CESoftmaxAccuracyEvaluator)",
    "f1": "= classification (CEF1Evaluator)",
    "reranking": "MAP, MRR@k, NDCG@k: pairs grouped by their first text (the query), label > 0 = relevant "
    "(CrossEncoderRerankingEvaluator)",
    "beir": "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) through crossjax.evaluation.beir",
}
HF_CONFIG = "config.json"  # = crossjax.models.checkpoints.CONFIG, not imported: that package loads JAX
ACTIVATIONS = ("identity", "sigmoid", "tanh", "softmax", "relu")  # crossjax.losses' names, listed for --help


class CliError(Exception):
    """A bad argument or file: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line on stderr (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{self.prog}: error: {message}")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default when it has a meaningful one that its help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _json(values: dict, sort_keys: bool = False) -> str:
    """Strict JSON (``json.dumps`` would print ``NaN``, which JSON parsers refuse): a number that is not finite,
    e.g. the correlation of constant labels, is ``null``; numpy and JAX scalars are plain numbers."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, bool | int | str) or value is None:
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) or getattr(value, "shape", None) == ():
            value = float(value)
            return value if math.isfinite(value) else None
        return value

    return json.dumps(plain(values), indent=2, sort_keys=sort_keys, allow_nan=False)

def _formatter(prog: str) -> argparse.HelpFormatter:
    return _HelpFormatter(prog, max_help_position=32, width=110)


def _columns(value: str) -> tuple[str, str]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two column names separated by a comma, got {value!r}")
    return parts[0], parts[1]


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _seed(value: str) -> int:
    try:
        return checked_seed(int(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {value!r}") from None


# ----------------------------------------------------------------------------------------------- arguments
def _add_hub_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", default=None, help="with a hub id: its branch, tag or commit (default: main)")
    p.add_argument(
        "--cache-folder",
        default=None,
        help="with a hub id: the Hugging Face cache to use (default: $SENTENCE_TRANSFORMERS_HOME, else the hub's own)",
    )


def _hub_options(args: argparse.Namespace) -> dict[str, str]:
    """CrossEncoder's keywords for --revision / --cache-folder, where given."""
    given = {"revision": args.revision, "cache_folder": args.cache_folder}
    return {k: v for k, v in given.items() if v is not None}


def _add_model_arguments(p: argparse.ArgumentParser, *, activation: bool = True) -> None:
    p.add_argument("--model", required=True, help="a saved model directory (or a Hugging Face hub id)")
    _add_hub_arguments(p)
    p.add_argument("--batch-size", type=_positive_int, default=32, help="pairs per predict batch")
    p.add_argument("--max-length", type=_positive_int, default=None, help="token limit per pair (default: the model's)")
    if activation:
        p.add_argument(
            "--activation",
            choices=ACTIVATIONS,
            default=None,
            help="applied to the logits (default: the one the model was saved with)",
        )
    p.add_argument("--no-progress-bar", action="store_true", help="no progress bar on stderr")


def _add_pair_file_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", type=_columns, default=None, help="the two text columns, e.g. query,document")
    p.add_argument("--label-column", default=None, help="the label column (train/eval; default label/labels/score)")
    p.add_argument("--no-header", action="store_true", help="TSV/CSV without a header row: text_a, text_b[, label]")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crossjax",
        description="Train, run and export cross-encoders (JAX/Flax; sentence-transformers' CrossEncoder API).",
        epilog=PAIR_FORMAT,
        formatter_class=_formatter,
    )
    from crossjax import __version__

    parser.add_argument("--version", action="version", version=f"crossjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,predict,rank,eval,export}")

    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=PAIR_FORMAT, formatter_class=_formatter)
        p.set_defaults(run=run)
        return p

    # predict
    p = command("predict", "score every pair of a file; one score (or one row of label scores) a line", _predict)
    _add_model_arguments(p)
    p.add_argument("--input", required=True, help=f"the pairs ({', '.join(EXTENSIONS)}; see the format below)")
    p.add_argument(
        "--output",
        default="-",
        help="TSV with a header: 'score' for one label, else one column per label name; '-' is stdout",
    )
    _add_pair_file_arguments(p)

    # rank
    p = command("rank", "rank documents for a query, best first (TSV: rank, index, score, text)", _rank)
    _add_model_arguments(p)
    p.add_argument("--query", required=True, help="the query text")
    p.add_argument(
        "--documents",
        required=True,
        help="one document per line (a text file; blank lines are skipped, so 'index' counts the documents, "
        "from 0), or .jsonl with a 'text' (and optional 'title') field",
    )
    p.add_argument("--top-k", type=_positive_int, default=None, help="print only the best K (default: all)")
    p.add_argument("--output", default="-", help="TSV file; '-' is stdout")

    # eval
    p = command("eval", "evaluate a model on a local file (or BEIR folder); prints the metrics as JSON", _eval)
    _add_model_arguments(p, activation=False)
    p.add_argument(
        "--evaluator",
        required=True,
        choices=list(EVALUATORS),
        help="; ".join(f"{k}: {v}" for k, v in EVALUATORS.items()),
    )
    p.add_argument("--data", required=True, help="a pair file with labels (or, for beir, a BEIR folder)")
    p.add_argument("--name", default=None, help="evaluator name (metric prefix, CSV name; default: the file stem)")
    p.add_argument("--output", default=None, help="folder for the evaluator's CSV (default: none written)")
    p.add_argument("--at-k", type=_positive_int, default=10, help="cut-off of MRR/NDCG (reranking, beir)")
    p.add_argument("--rerank-k", type=_positive_int, default=100, help="beir: BM25 candidates reranked per query")
    p.add_argument("--split", default="test", help="beir: the qrels/<split>.tsv to read")
    p.add_argument("--max-queries", type=_positive_int, default=None, help="beir: only the first N judged queries")
    _add_pair_file_arguments(p)

    # export
    p = command("export", "save a model as a Hugging Face + sentence-transformers folder and/or write ONNX", _export)
    p.add_argument("--model", required=True, help="a model directory or hub id crossjax can load")
    _add_hub_arguments(p)
    p.add_argument(
        "--output",
        default=None,
        help="folder to save the model to (default: with --onnx, onnx/ is added to --model's own folder)",
    )
    p.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (needs crossjax[torch])")
    p.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset version")

    # train
    p = command("train", "fine-tune a cross-encoder on a pair file (flags as in examples/, or --config)", _train)
    p.add_argument(
        "--config",
        default=None,
        help="a .yaml/.yml/.json file of flag values (keys are the flag names, e.g. batch_size: 32); "
        "flags on the command line override it",
    )
    p.add_argument("--model", default=None, help="hub id or local Hugging Face directory to start from (required)")
    _add_hub_arguments(p)
    p.add_argument("--train", default=None, help="training pairs with labels (required)")
    p.add_argument("--dev", default=None, help="dev pairs with labels, evaluated during training")
    p.add_argument("--num-labels", type=_positive_int, default=1, help="1: a score (BCE); N > 1: N classes (CE)")
    p.add_argument(
        "--ignore-mismatched-sizes",
        action="store_true",
        help="train a new head when --model's has another number of labels than --num-labels (else an error, as in "
        "transformers)",
    )
    p.add_argument(
        "--evaluator",
        choices=[e for e in EVALUATORS if e != "beir"],
        default=None,
        help="dev evaluator (default: correlation for one label, classification otherwise)",
    )
    p.add_argument("--both-orders", action="store_true", help="train on (a, b) and (b, a), for symmetric tasks")
    p.add_argument("--epochs", type=_positive_int, default=1, help="passes over the training pairs")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="global batch size (all devices, all hosts)")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (AdamW, linear warm-up and decay)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="warm-up steps as a fraction of all steps")
    p.add_argument("--evaluation-steps", type=int, default=0, help="also evaluate every N steps (0: epoch ends)")
    p.add_argument("--output", default=None, help="where the best model is saved (default: output/crossjax-<date>)")
    p.add_argument("--max-length", type=_positive_int, default=None, help="token limit per pair (default: the model's)")
    p.add_argument("--max-train-samples", type=_positive_int, default=None, help="random subset of the train pairs")
    p.add_argument("--max-dev-samples", type=_positive_int, default=None, help="random subset of the dev pairs")
    p.add_argument("--seed", type=_seed, default=42, help="data order, dropout, head init and subsets")
    p.add_argument("--use-amp", action="store_true", help="bfloat16 compute (float32 master weights)")
    p.add_argument("--checkpoint-path", default=None, help="orbax checkpoints for preemption-safe resume")
    p.add_argument("--checkpoint-save-steps", type=_positive_int, default=500, help="steps between checkpoints")
    p.add_argument("--coordinator-address", default=None, help="multi-host: host:port of process 0")
    p.add_argument("--num-processes", type=_positive_int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    p.add_argument("--no-progress-bar", action="store_true", help="no progress bar on stderr")
    _add_pair_file_arguments(p)
    return parser


# ----------------------------------------------------------------------------------------------- helpers
def _check_model(name: str) -> None:
    """A local path must be a model directory; a name that can only be a hub id is left to the loader.
    (Checked without importing crossjax.models, which loads JAX: a bad path fails in a fraction of a second.)"""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not path.is_dir():
            raise CliError(
                f"--model {name}: no such directory" if not path.exists() else f"--model {name}: not a directory"
            )
        if step_folders.step_model(path) is not None:
            return  # a crossjax training checkpoint's step folder: the loader reads its model folder
        if not (path / HF_CONFIG).is_file():
            hint = step_folders.steps_hint(path)
            raise CliError(f"--model {name}: no {HF_CONFIG} in it (not a Hugging Face model directory){hint}")


def _check_output_file(output: str, input_flag: str, input_path: str) -> None:
    """A file the results can be written to, and not the input file (``input_flag``'s) it would overwrite."""
    if output != "-":
        target = Path(output).expanduser()
        parent = target.absolute().parent
        if not parent.is_dir():
            raise CliError(f"--output {output}: folder {parent} does not exist")
        if Path(output).is_dir():
            raise CliError(f"--output {output} is a directory; name a file")
        source = Path(input_path).expanduser()
        if target.exists() and source.exists() and os.path.samefile(target, source):
            raise CliError(f"--output {output} is the {input_flag} file: the results would replace it; name another")


def _check_output_folder(output: str | None) -> None:
    if output is not None and Path(output).expanduser().exists() and not Path(output).expanduser().is_dir():
        raise CliError(f"--output {output} is a file; name a folder")


def _load_model(args: argparse.Namespace, **kwargs: Any):
    from crossjax import CrossEncoder

    return CrossEncoder(args.model, max_length=args.max_length, **_hub_options(args), **kwargs)


def _open_output(output: str):
    return open(output, "w", encoding="utf-8", newline="") if output != "-" else _StdoutWriter()


class _StdoutWriter:
    def __enter__(self):
        return sys.stdout

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()


def _number(value: float) -> str:
    """9 significant digits: a float32 read back is bit-for-bit the score."""
    return format(float(value), ".9g")


def _score_columns(model: Any) -> list[str]:
    if model.num_labels == 1:
        return ["score"]
    id2label = getattr(model.config, "id2label", None) or {}
    return [str(id2label.get(i, f"LABEL_{i}")) for i in range(model.num_labels)]


# ----------------------------------------------------------------------------------------------- commands
def _predict(args: argparse.Namespace) -> int:
    _check_model(args.model)
    _check_output_file(args.output, "--input", args.input)
    # a label column is left out of the texts, its values unread
    table = read_pairs(
        args.input, columns=args.columns, label_column=args.label_column, header=not args.no_header, read_labels=False
    )
    model = _load_model(args)
    scores = model.predict(
        table.pairs,
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress_bar,
        activation_fn=args.activation,
    )
    with _open_output(args.output) as f:
        f.write("\t".join(_score_columns(model)) + "\n")
        rows = scores.reshape(len(table), -1)
        f.writelines("\t".join(_number(v) for v in row) + "\n" for row in rows)
    return 0


def _rank(args: argparse.Namespace) -> int:
    _check_model(args.model)
    _check_output_file(args.output, "--documents", args.documents)
    documents = read_documents(args.documents)
    model = _load_model(args)
    if model.num_labels != 1:
        raise CliError(f"--model {args.model} has {model.num_labels} outputs; rank needs a one-score model")
    ranked = model.rank(
        args.query,
        documents,
        top_k=args.top_k,
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress_bar,
        activation_fn=args.activation,
    )
    with _open_output(args.output) as f:
        f.write("rank\tindex\tscore\ttext\n")
        for position, hit in enumerate(ranked, start=1):
            text = " ".join(documents[hit["corpus_id"]].split())  # one line per hit, whatever the document holds
            f.write(f"{position}\t{hit['corpus_id']}\t{_number(hit['score'])}\t{text}\n")
    return 0


def _class_labels(values: Sequence[float], path: str, ignored: int | None = None) -> list[int]:
    """Class indices; ``ignored`` (training data: torch's ignore_index -100, which fit's cross-entropy skips as
    sentence-transformers' old_fit does) is kept for the loss to leave out."""
    labels = []
    for i, value in enumerate(values):
        whole = float(value).is_integer()
        if not whole or (value < 0 and int(value) != ignored):
            shown = int(value) if whole else value
            note = ""
            if shown == -100:
                note = " (-100, torch's ignore_index, marks an unlabelled pair in training data only)"
            raise CliError(
                f"{path}: pair {i + 1} has label {shown!r}; classification needs class indices 0, 1, ...{note}"
            )
        labels.append(int(value))
    return labels


def _build_evaluator(
    kind: str,
    pairs: list[tuple[str, str]],
    labels: list[float],
    path: str,
    name: str,
    batch_size: int,
    at_k: int,
    progress: bool,
) -> Any:
    """A crossjax evaluator of the named kind over labelled pairs."""
    from crossjax import evaluation

    common = dict(name=name, batch_size=batch_size, show_progress_bar=progress)
    if kind == "correlation":
        return evaluation.CrossEncoderCorrelationEvaluator(pairs, labels, **common)
    if kind == "reranking":
        from crossjax import InputExample

        examples = [InputExample(texts=list(pair), label=label) for pair, label in zip(pairs, labels, strict=True)]
        return evaluation.CrossEncoderRerankingEvaluator.from_input_examples(examples, at_k=at_k, **common)
    classes = {
        "classification": evaluation.CrossEncoderClassificationEvaluator,
        "binary": evaluation.CEBinaryClassificationEvaluator,
        "softmax": evaluation.CESoftmaxAccuracyEvaluator,
        "f1": evaluation.CEF1Evaluator,
    }
    return classes[kind](pairs, _class_labels(labels, path), **common)


def _beir_evaluator(folder: str, args: argparse.Namespace) -> Any:
    """``crossjax.evaluation.beir.CrossEncoderBEIREvaluator``: BM25 top-``--rerank-k`` candidates of a BEIR
    folder, reranked by the model."""
    try:
        from crossjax.evaluation.beir import CrossEncoderBEIREvaluator
    except ImportError:
        raise CliError("--evaluator beir needs crossjax.evaluation.beir, which this crossjax does not have") from None
    return CrossEncoderBEIREvaluator(
        folder,
        rerank_k=args.rerank_k,
        at_k=args.at_k,
        split=args.split,
        max_queries=args.max_queries,
        name=args.name or "BEIR",
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress_bar,
    )


def _eval(args: argparse.Namespace) -> int:
    _check_model(args.model)
    _check_output_folder(args.output)  # before the model is loaded and scored
    if args.evaluator == "beir":
        if not Path(args.data).is_dir():
            raise CliError(
                f"--data {args.data}: the beir evaluator reads a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"
            )
        evaluator = _beir_evaluator(args.data, args)
    else:
        table = read_pairs(
            args.data, columns=args.columns, label_column=args.label_column, need_label=True, header=not args.no_header
        )
        name = args.name if args.name is not None else Path(args.data).stem
        evaluator = _build_evaluator(
            args.evaluator,
            table.pairs,
            table.labels,
            args.data,
            name,
            args.batch_size,
            args.at_k,
            not args.no_progress_bar,
        )
    model = _load_model(args)
    metrics = evaluator(model, output_path=args.output)
    print(_json(metrics, sort_keys=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.output is None and not args.onnx:
        raise CliError("nothing to do: pass --output DIR (save the model) and/or --onnx")
    _check_model(args.model)
    _check_output_folder(args.output)
    if args.onnx:  # a bad opset or a missing exporter stops before the model is saved
        from crossjax.onnx import check_opset, import_export_dependencies

        check_opset(args.opset)
        import_export_dependencies()
    directory = args.model
    if args.output is not None:
        from crossjax import CrossEncoder

        directory = CrossEncoder(args.model, **_hub_options(args)).save(args.output)
        print(f"saved the model to {directory}")
    elif not Path(args.model).is_dir():
        raise CliError(f"--onnx without --output writes into --model's folder; {args.model} is not a local folder")
    if args.onnx:
        from crossjax.onnx import export_onnx

        print(f"wrote {export_onnx(directory, opset=args.opset)}")
    return 0


def _train_config_argv(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """The flags a config file stands for, so argparse checks its values exactly as it checks flags."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CliError(f"--config {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CliError(f"--config {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            content = yaml.safe_load(text)
        elif file.suffix.lower() == ".json":
            content = json.loads(text)
        else:
            raise CliError(f"--config {path}: use a .yaml, .yml or .json file")
    except ValueError as e:
        raise CliError(f"--config {path}: not valid JSON ({e})") from None
    except Exception as e:  # yaml.YAMLError
        if isinstance(e, CliError):
            raise
        raise CliError(f"--config {path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(content, dict):
        raise CliError(f"--config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for key, value in content.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in ("config", "help"):
            raise CliError(f"--config {path}: unknown key {key!r}")
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                quoted = " (a quoted string: write it unquoted)" if isinstance(value, str) else ""
                raise CliError(f"--config {path}: {key} must be true or false, got {value!r}{quoted}")
            argv += [flag] if value else []
        elif isinstance(value, list):  # only --columns takes a list (its comma-separated names)
            if action.type is not _columns:
                raise CliError(f"--config {path}: {key} takes one value, got the list {value!r}")
            if not all(isinstance(item, str) for item in value):
                raise CliError(f"--config {path}: {key} must be a list of column names (strings), got {value!r}")
            argv += [flag, ",".join(value)]
        elif value is not None:
            _check_config_value(path, key, action, str(value))
            argv += [flag, str(value)]
    return argv


def _check_config_value(path: str, key: Any, action: argparse.Action, text: str) -> None:
    """A config file's value checked as argparse checks the flag's, named with the file and key (argparse's own
    message names only the flag)."""
    try:
        value = action.type(text) if callable(action.type) else text
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        kind = getattr(action.type, "__name__", "value")
        detail = str(e) if isinstance(e, argparse.ArgumentTypeError) else f"not a valid {kind}, got {text!r}"
        raise CliError(f"--config {path}: {key}: {detail}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise CliError(f"--config {path}: {key} must be one of {choices}, got {text!r}")


def _train(args: argparse.Namespace) -> int:
    for flag in ("model", "train"):
        if getattr(args, flag) is None:
            raise CliError(f"crossjax train: error: --{flag} is required (on the command line or in --config)")
    _check_model(args.model)
    if args.output is not None and "://" in args.output:
        raise CliError(f"--output {args.output}: crossjax train writes to a local folder; copy it afterwards")
    classification = args.num_labels > 1
    pair_options = dict(
        columns=args.columns, label_column=args.label_column, need_label=True, header=not args.no_header
    )
    train_table = read_pairs(args.train, **pair_options)
    dev_table = read_pairs(args.dev, **pair_options) if args.dev else None
    if classification:  # before training: int() would truncate a dev label 0.7 to class 0
        _class_labels(train_table.labels, args.train, ignored=-100)
        if dev_table is not None:
            _class_labels(dev_table.labels, args.dev)
    if not 0 <= args.warmup_ratio <= 1:
        raise CliError(f"--warmup-ratio must be a fraction between 0 and 1, got {args.warmup_ratio}")
    output = args.output or f"output/crossjax-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"

    from crossjax.parallel import initialize_distributed

    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    from crossjax import CrossEncoder, DataLoader, InputExample

    def examples(table: PairTable, limit: int | None, both_orders: bool) -> list[InputExample]:
        import random

        rows = list(zip(table.texts_a, table.texts_b, table.labels or [], strict=True))
        if limit is not None and limit < len(rows):
            rows = [rows[i] for i in sorted(random.Random(args.seed).sample(range(len(rows)), limit))]
        out = []
        for a, b, label in rows:
            label = int(label) if classification else float(label)
            out.append(InputExample(texts=[a, b], label=label))
            if both_orders:
                out.append(InputExample(texts=[b, a], label=label))
        return out

    train_examples = examples(train_table, args.max_train_samples, args.both_orders)
    evaluator = None
    if dev_table is not None:
        dev = examples(dev_table, args.max_dev_samples, False)
        kind = args.evaluator or ("classification" if classification else "correlation")
        evaluator = _build_evaluator(
            kind,
            [tuple(e.texts) for e in dev],
            [e.label for e in dev],
            args.dev,
            Path(args.dev).stem,
            32,
            10,
            not args.no_progress_bar,
        )
    model = CrossEncoder(
        args.model, num_labels=args.num_labels, max_length=args.max_length, seed=args.seed, **_hub_options(args),
        model_kwargs={"ignore_mismatched_sizes": args.ignore_mismatched_sizes},
    )  # fmt: skip
    loader = DataLoader(train_examples, shuffle=True, batch_size=args.batch_size, seed=args.seed)
    summary = model.fit(
        train_dataloader=loader,
        evaluator=evaluator,
        epochs=args.epochs,
        evaluation_steps=args.evaluation_steps,
        warmup_steps=math.ceil(len(loader) * args.epochs * args.warmup_ratio),
        optimizer_params={"lr": args.lr},
        output_path=output,
        use_amp=args.use_amp,
        show_progress_bar=not args.no_progress_bar,
        seed=args.seed,
        checkpoint_path=args.checkpoint_path,
        checkpoint_save_steps=args.checkpoint_save_steps,
    )
    from crossjax.runtime import is_main_process

    if is_main_process():
        keys = ("global_step", "train_loss", "best_score", "pairs_per_second", "compilations")
        print(_json({"output": output, **{k: summary.get(k) for k in keys}}))
    return 0


# ----------------------------------------------------------------------------------------------- entry
def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0, 1 for a failure, 2 for bad arguments or files)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("CROSSJAX_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    logging.basicConfig(format="%(asctime)s - %(message)s", level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    command = "crossjax"
    try:
        args = parser.parse_args(argv)
        command = f"crossjax {args.command}"
        if args.command == "train" and args.config is not None:
            train_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
                "train"
            ]
            args = parser.parse_args(["train", *_train_config_argv(train_parser, args.config), *argv[1:]])
        return int(args.run(args) or 0)
    except CliError as e:
        message = _one_line(e)
        print(message if message.startswith("crossjax") else f"{command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of the results (e.g. `| head`) stopped reading: nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 1
    except (PairFileError, ValueError, OSError) as e:
        if debug:
            raise
        print(f"{command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:
        if debug:
            raise
        print(f"{command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
