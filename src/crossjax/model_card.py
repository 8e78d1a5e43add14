"""The ``README.md`` of an export: a model card in sentence-transformers' cross-encoder layout.

:class:`CrossEncoderModelCardData` holds what the user says about the model (``CrossEncoder(...,
model_card_data=CrossEncoderModelCardData(language="en", license="apache-2.0", model_id="me/my-reranker"))``,
the fields of sentence-transformers' class of that name, plus ``base_model``) and what training recorded:
evaluators report their results through :meth:`~CrossEncoderModelCardData.set_evaluation_metrics` (as they do
in sentence-transformers), and a training loop reports the rest through
:meth:`~CrossEncoderModelCardData.set_training` (``CrossEncoder.fit`` does this with :class:`CardRecorder`, one
of the fit loop's callbacks; the trainer can call ``set_training`` itself).

:func:`generate_model_card` renders the card; its YAML metadata is a ``huggingface_hub.ModelCardData`` and the
text is parsed back with ``huggingface_hub.ModelCard``, so metadata the hub would reject fails here too.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from copy import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from crossjax.logs import CURVES_FILE, EVAL_PREFIX, RunCallback, RunInfo, epoch_at

logger = logging.getLogger("crossjax")

README = "README.md"
# Settings a card leaves out: sentence-transformers' list (its card callback's on_train_begin), and the legacy
# fit's run-local ones (where it writes and how often it reports)
CARD_IGNORED_SETTINGS = frozenset({
    "output_dir", "logging_dir", "logging_strategy", "logging_first_step", "logging_steps", "evaluation_strategy",
    "eval_strategy", "eval_steps", "eval_delay", "save_strategy", "save_steps", "save_total_limit",
    "metric_for_best_model", "greater_is_better", "report_to", "samples_per_label", "show_progress_bar", "do_train",
    "do_eval", "do_test", "run_name", "hub_token", "push_to_hub_token",
    "output_path", "log_dir", "checkpoint_path", "checkpoint_save_steps", "checkpoint_save_total_limit",
    "evaluation_steps", "save_best_model",
})  # fmt: skip
MODEL_ID_PLACEHOLDER = "cross_encoder_model_id"  # the snippets' model name when saved nowhere yet
DEFAULT_USAGE_PAIRS = [
    ["How many calories in an egg", "There are on average between 55 and 80 calories in an egg depending on its size."],
    [
        "How many calories in an egg",
        "Egg whites are very low in calories, have no fat, no cholesterol, and are loaded with protein.",
    ],
    ["How many calories in an egg", "Most of the calories in an egg come from the yellow yolk in the center."],
]
SBERT_CITATION = """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""
# The user-facing fields of sentence-transformers' CrossEncoderModelCardData (copied from an object of that class).
USER_FIELDS = (
    "language",
    "license",
    "model_name",
    "model_id",
    "train_datasets",
    "eval_datasets",
    "task_name",
    "tags",
    "local_files_only",
    "generate_widget_examples",
)


@dataclass
class DatasetRecord:
    """One training dataset of a run and its loss (a multi-dataset run has one each, by dataset name)."""

    name: str | None = None
    dataset_size: int | None = None
    columns: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    loss: str | None = None
    loss_config: dict[str, Any] = field(default_factory=dict)
    citation: str | None = None  # the loss's BibTeX entry, where it has one


@dataclass
class TrainingRecord:
    """What a training run told the card (see :meth:`CrossEncoderModelCardData.set_training`)."""

    datasets: list[DatasetRecord] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    default_hyperparameters: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    steps_per_epoch: int | None = None
    logging_steps: int | None = None
    best_step: int | None = None
    training_seconds: float | None = None
    devices: str | None = None
    curves_dir: str | None = None  # where the run drew training_curves.png (its log_dir)
    batches_per_epoch: int | None = None  # with accumulation_steps: the Epoch column as Hugging Face counts it
    accumulation_steps: int = 1


@dataclass
class CrossEncoderModelCardData:
    """What the model card says: the user's fields (as in sentence-transformers) and what training recorded.

    Args:
        language: e.g. ``"en"`` or ``["en", "de"]``.
        license: e.g. ``"apache-2.0"``.
        model_name: the card's title (default ``"CrossEncoder based on <base_model>"``).
        model_id: the hub id the model will have (``"user/name"``); the usage snippets load it. Without it they
            name sentence-transformers' placeholder ``"cross_encoder_model_id"`` (never the local folder: a
            card travels with the model, and a path of the saving machine loads nowhere else).
        train_datasets / eval_datasets: ``[{"name": "STS-B", "id": "sentence-transformers/stsb"}]``; the ``id``s
            become the card's ``datasets`` metadata (not checked against the hub, which may be unreachable).
        task_name: what the scores are for (default: by the number of labels, as sentence-transformers).
        tags: extra tags (the card always has sentence-transformers, cross-encoder, jax, flax, and reranker for
            one label, generated_from_trainer after training).
        base_model: the hub id the model was fine-tuned from (default: the hub id it was loaded from, if it was
            loaded from the hub). Not in sentence-transformers, which looks it up on the hub.
        base_model_revision: the base model's revision (default: the revision it was loaded at, else the commit
            of the hub cache it was read from), shown as sentence-transformers shows it.
        generate_widget_examples: False leaves the computed scores out of the usage snippet.
    """

    language: str | list[str] | None = field(default_factory=list)  # sentence-transformers' default
    license: str | None = None
    model_name: str | None = None
    model_id: str | None = None
    train_datasets: list[dict[str, str]] = field(default_factory=list)
    eval_datasets: list[dict[str, str]] = field(default_factory=list)
    task_name: str | None = None
    tags: list[str] = field(default_factory=list)
    local_files_only: bool = False  # accepted for sentence-transformers compatibility: the hub is never queried
    generate_widget_examples: bool = True
    base_model: str | None = None
    base_model_revision: str | None = None

    eval_results_dict: dict[Any, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    training: TrainingRecord | None = field(default=None, init=False, repr=False)
    usage_examples: list[list[str]] | None = field(default=None, init=False, repr=False)
    usage_scores: Any = field(default=None, init=False, repr=False)  # the model's scores for usage_examples

    def __post_init__(self) -> None:
        if isinstance(self.language, str):
            self.language = [self.language]
        if isinstance(self.tags, str):
            self.tags = [self.tags]
        self.language = [] if self.language is None else self.language
        for what in ("language", "tags"):  # else the card is not written at save (a warning, no README.md)
            value = getattr(self, what)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{what} must be a string or a list of non-empty strings, got {value!r}")
            setattr(self, what, list(value))
        if self.license is not None and not isinstance(self.license, str):
            raise ValueError(f"license must be a string such as 'apache-2.0', got {self.license!r}")
        if self.model_id is not None and self.model_id.count("/") != 1:
            raise ValueError(f"model_id={self.model_id!r} must be a hub id with the user or organization: 'user/name'")
        for what in ("train_datasets", "eval_datasets"):
            for dataset in getattr(self, what):
                if not isinstance(dataset, dict) or not ({"name", "id"} & set(dataset)):
                    raise ValueError(f"{what} entries must be dicts with a 'name' and/or an 'id', got {dataset!r}")
                dataset.setdefault("name", dataset.get("id"))

    @classmethod
    def coerce(cls, data: Any) -> CrossEncoderModelCardData:
        """Ours as is; sentence-transformers' ``CrossEncoderModelCardData`` (or a dict) by its user fields."""
        if data is None:
            return cls()
        if isinstance(data, cls):
            return data
        if isinstance(data, dict):
            return cls(**data)
        if all(hasattr(data, name) for name in ("model_id", "train_datasets", "tags")):
            values = {name: getattr(data, name) for name in USER_FIELDS if hasattr(data, name)}
            default_st_tags = {"sentence-transformers", "cross-encoder", "reranker"}
            values["tags"] = [t for t in values.get("tags") or [] if t not in default_st_tags]
            values["language"] = values.get("language") or []
            return cls(**{k: copy(v) for k, v in values.items()})
        raise TypeError(f"model_card_data must be a CrossEncoderModelCardData, got {type(data).__name__}")

    # ---------------------------------------------------------------------------------- what gets recorded
    def set_evaluation_metrics(self, evaluator: Any, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
        """An evaluator's latest results (sentence-transformers' evaluators and crossjax's call this)."""
        self.eval_results_dict[evaluator] = dict(metrics)

    def set_model_id(self, model_id: str) -> None:
        self.model_id = model_id

    def set_language(self, language: str | list[str]) -> None:
        self.language = [language] if isinstance(language, str) else list(language)

    def set_license(self, license: str) -> None:  # noqa: A002 - sentence-transformers' name
        self.license = license

    def set_base_model(self, model_id: str, revision: str | None = None) -> bool:
        """The model fine-tuned from, at ``revision`` (sentence-transformers checks it on the hub; the hub may be
        unreachable here, so it is taken as given)."""
        self.base_model, self.base_model_revision = model_id, revision
        return True

    def add_tags(self, tags: str | list[str]) -> None:
        for tag in [tags] if isinstance(tags, str) else tags:
            if tag not in self.tags:
                self.tags.append(tag)

    def set_training(
        self,
        *,
        dataset: Any = None,
        dataset_size: int | None = None,
        columns: Sequence[str] | None = None,
        samples: Sequence[dict[str, Any]] | None = None,
        loss: Any = None,
        loss_config: dict[str, Any] | None = None,
        dataset_name: str | None = None,
        args: Any = None,
        default_args: Any = None,
        log_history: list[dict[str, Any]] | None = None,
        steps_per_epoch: int | None = None,
        logging_steps: int | None = None,
        best_step: int | None = None,
        training_seconds: float | None = None,
        devices: str | None = None,
        curves_dir: str | None = None,
        batches_per_epoch: int | None = None,
        accumulation_steps: int | None = None,
    ) -> TrainingRecord:
        """Record what a training run knows; fields left None keep what an earlier call recorded.

        ``dataset``: a ``datasets.Dataset`` (size, columns and first rows are read from it), else give
        ``dataset_size``/``columns``/``samples`` (rows as dicts). ``loss``: a loss object (its class path, and
        its ``get_config_dict()`` unless ``loss_config`` is given) or a description string. These describe the
        training dataset ``dataset_name`` (a multi-dataset run calls once per dataset; None: the only one).
        ``args``: the run's settings, a dataclass (its fields' defaults are the defaults) or a dict (with
        ``default_args``).
        ``log_history``: records as in ``metrics.jsonl`` (``step``, ``epoch``, ``loss`` ... and ``eval_*``),
        kept by reference so a list still growing shows its latest rows. ``best_step``: the step of the saved
        model, printed in bold in the training-log table. ``curves_dir``: the folder the run drew its
        ``training_curves.png`` into (the card embeds it when saved there).
        """
        record = self.training or TrainingRecord()
        if any(v is not None for v in (dataset, dataset_size, columns, samples, loss, loss_config)):
            self._set_dataset(record, dataset_name, dataset, dataset_size, columns, samples, loss, loss_config)
        if args is not None:
            hyperparameters, defaults = _settings_and_defaults(args)
            if default_args is not None:
                defaults = _settings_and_defaults(default_args)[0]
            # as sentence-transformers' card: no run-local settings (paths, logging, saving, tokens)
            record.hyperparameters = {k: v for k, v in hyperparameters.items() if k not in CARD_IGNORED_SETTINGS}
            record.default_hyperparameters = defaults
        for name, value in (
            ("log_history", log_history),
            ("steps_per_epoch", steps_per_epoch),
            ("logging_steps", logging_steps),
            ("best_step", best_step),
            ("training_seconds", training_seconds),
            ("devices", devices),
            ("curves_dir", curves_dir),
            ("batches_per_epoch", batches_per_epoch),
            ("accumulation_steps", accumulation_steps),
        ):
            if value is not None:
                setattr(record, name, value)
        self.training = record
        self.add_tags("generated_from_trainer")
        return record

    def _set_dataset(
        self, record: TrainingRecord, name, dataset, dataset_size, columns, samples, loss, loss_config
    ) -> None:
        one = next((d for d in record.datasets if d.name == name), None)
        if one is None:
            one = DatasetRecord(name=name)
            record.datasets.append(one)
        if dataset is not None:
            one.dataset_size = len(dataset) if hasattr(dataset, "__len__") else None
            one.columns = list(getattr(dataset, "column_names", None) or [])
            if one.dataset_size:
                head = dataset[: min(3, one.dataset_size)]
                if isinstance(head, dict):  # datasets.Dataset slices are column dicts
                    one.samples = [dict(zip(head, row, strict=True)) for row in zip(*head.values(), strict=True)]
        if dataset_size is not None:
            one.dataset_size = int(dataset_size)
        if columns is not None:
            one.columns = list(columns)
        if samples is not None:
            one.samples = [dict(s) for s in samples]
        if loss is not None:
            if isinstance(loss, str):
                one.loss = loss
            else:
                one.loss = f"{type(loss).__module__}.{type(loss).__qualname__}"
                if loss_config is None and hasattr(loss, "get_config_dict"):
                    loss_config = loss.get_config_dict()
                try:  # a property that raises leaves the entry out, as sentence-transformers does
                    citation = loss.citation
                except Exception:  # noqa: BLE001
                    citation = None
                one.citation = citation.strip() if isinstance(citation, str) and citation.strip() else None
            self.add_tags(f"loss:{one.loss.rsplit('.', 1)[-1].split('(')[0]}")
        if loss_config is not None:
            one.loss_config = dict(loss_config)

    # ---------------------------------------------------------------------------------- rendering
    def prepare_usage_example(self, model: Any) -> None:
        """Score the usage snippet's pairs with ``model`` (every process of a multi-process run must call it)."""
        pairs = self.usage_pairs()
        self.usage_examples = pairs
        self.usage_scores = model.predict(pairs, show_progress_bar=False) if self.generate_widget_examples else None

    def usage_pairs(self) -> list[list[str]]:
        """The training data's first pairs, else sentence-transformers' default example."""
        samples = self.training.datasets[0].samples if self.training and self.training.datasets else []
        pairs = []
        for sample in samples:
            texts = [v for k, v in sample.items() if isinstance(v, str) and k not in ("label", "dataset_name")]
            if len(texts) >= 2:
                pairs.append(texts[:2])
        return pairs or [list(p) for p in DEFAULT_USAGE_PAIRS]


def _settings_and_defaults(args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A dataclass's (or dict's) settings and the dataclass's field defaults, JSON-friendly."""
    from dataclasses import MISSING, asdict, is_dataclass

    if is_dataclass(args) and not isinstance(args, type):
        values = asdict(args)
        defaults = {}
        for f in fields(args):
            if f.default is not MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not MISSING:
                defaults[f.name] = f.default_factory()
        return _jsonable(values), _jsonable(defaults)
    if isinstance(args, dict):
        return _jsonable(args), {}
    raise TypeError(f"args must be a dataclass or a dict, got {type(args).__name__}")


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


# -------------------------------------------------------------------------------------- markdown helpers
def format_value(value: Any) -> Any:
    """Numbers as sentence-transformers' cards print them: floats rounded to 4 decimals."""
    if isinstance(value, float):
        return round(value, 4)
    return value


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A left-aligned markdown table whose columns are the rows' keys (in first-seen order)."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[str(row.get(c, "-")).replace("|", "\\|").replace("\n", " ") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join(":" + "-" * (w + 1) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``"23.4 seconds"``, ``"1.6 minutes"``, ... as sentence-transformers' cards write durations."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} seconds"


def framework_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"Python": platform.python_version()}
    for label, name in (
        ("crossjax", "crossjax"),
        ("JAX", "jax"),
        ("Flax", "flax"),
        ("Optax", "optax"),
        ("Transformers", "transformers"),
        ("Tokenizers", "tokenizers"),
        ("Datasets", "datasets"),
    ):
        try:
            out[label] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _strip_name(evaluator: Any, metrics: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """An evaluator's metrics without its ``name_`` prefix, and its primary metric likewise."""
    name = getattr(evaluator, "name", None)
    primary = getattr(evaluator, "primary_metric", None)
    if name and all(k.startswith(name + "_") for k in metrics):
        metrics = {k[len(name) + 1 :]: v for k, v in metrics.items()}
        if primary and primary.startswith(name + "_"):
            primary = primary[len(name) + 1 :]
    return metrics, primary


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _description(evaluator: Any) -> str:
    description = getattr(evaluator, "description", None)
    return description if isinstance(description, str) and description else type(evaluator).__name__


def _card_number(value: Any) -> float | None:
    """A metric's number for the card's model-index: a number, or the number that starts a string such as the
    reranking evaluator's ``"0.8155 (+0.0123)"`` (its value and the change from the first-stage ranking), as
    sentence-transformers reads it; None for anything else."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    if isinstance(value, str) and " " in value.strip():
        return _card_number(value.split()[0])
    return None


# -------------------------------------------------------------------------------------- the card
def card_metadata(data: CrossEncoderModelCardData, model: Any, eval_results: dict[Any, dict[str, Any]]):
    """The card's YAML metadata as a validated ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    results = []
    metric_names: list[str] = []
    for evaluator, raw in eval_results.items():
        metrics, _ = _strip_name(evaluator, raw)
        name = getattr(evaluator, "name", None) or None
        description = _description(evaluator)
        for key, value in metrics.items():
            metric_names.append(key)  # every metric, as sentence-transformers lists them
            value = _card_number(value)
            if value is None:
                continue
            results.append(
                EvalResult(
                    task_type=description.lower().replace(" ", "-"),
                    task_name=description,
                    dataset_type=name or "unknown",
                    dataset_name=name.replace("_", " ").replace("-", " ") if name else "Unknown",
                    metric_type=key,
                    metric_name=key.replace("_", " ").title(),
                    metric_value=value,
                )
            )
    tags = ["sentence-transformers", "cross-encoder", "reranker", "jax", "flax", *data.tags]  # sentence-transformers
    # 6.2 tags every cross-encoder a reranker, and a trained one with its training set's size
    sizes = [one.dataset_size for one in data.training.datasets] if data.training is not None else []
    if any(sizes):
        tags.append(f"dataset_size:{sum(size or 0 for size in sizes)}")
    dataset_ids = [d["id"] for d in [*data.train_datasets, *data.eval_datasets] if d.get("id")]
    return ModelCardData(
        language=data.language or None,
        license=data.license,
        library_name="sentence-transformers",
        tags=list(dict.fromkeys(tags)),
        base_model=data.base_model,
        datasets=list(dict.fromkeys(dataset_ids)) or None,
        metrics=list(dict.fromkeys(metric_names)) or None,
        pipeline_tag="text-ranking" if model.num_labels == 1 else "text-classification",
        model_name=model_name(data),
        eval_results=results or None,
    )


def model_name(data: CrossEncoderModelCardData) -> str:
    if data.model_name:
        return data.model_name
    return f"CrossEncoder based on {data.base_model}" if data.base_model else "CrossEncoder"


def generate_model_card(
    model: Any, save_path: str | os.PathLike | None = None, eval_results: dict[Any, dict[str, Any]] | None = None
) -> str:
    """The README.md text for ``model`` (a crossjax ``CrossEncoder``) saved to ``save_path``.

    ``eval_results`` (default: the evaluators' latest results) fills the Evaluation section. The text is parsed
    back with ``huggingface_hub.ModelCard`` before it is returned, so invalid metadata raises here.
    """
    from huggingface_hub import ModelCard

    data: CrossEncoderModelCardData = model.model_card_data
    eval_results = data.eval_results_dict if eval_results is None else eval_results
    metadata = card_metadata(data, model, eval_results)
    location = card_location(data)
    sections = [
        _intro(data, model),
        _model_details(data, model),
        _usage(data, model, location),
        _evaluation(eval_results),
        _training_details(data, model, save_path),
        _framework_and_citation(data),
    ]
    content = f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(s.strip("\n") for s in sections if s) + "\n"
    return ModelCard(content).content  # validates the metadata as the hub does


def card_location(data: CrossEncoderModelCardData) -> str:
    """How the card's snippets name the model: its hub id, else sentence-transformers' placeholder. Never the
    local folder: a card travels (uploaded by any tool, copied with the folder) and an absolute path would show
    the saving machine's directories and load nowhere else."""
    return data.model_id or MODEL_ID_PLACEHOLDER


def loaded_model_card(directory: str | os.PathLike) -> str | None:
    """The card a saved cross-encoder came with (``README.md``), or None."""
    try:
        return (Path(directory) / README).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def reused_model_card(text: str, loaded_from: str | os.PathLike, model: Any, save_path: str | os.PathLike) -> str:
    """The card a model was loaded with, saved again. As in sentence-transformers, a model not trained since keeps
    its card (it describes that model's training); only the snippets' name for the model changes, from the
    placeholder (or the folder it was loaded from, which earlier crossjax versions wrote) to its hub id once it has
    one.
    The curves image the card shows is copied into ``save_path`` beside it."""
    new = _python_string(card_location(model.model_card_data))
    for old in (str(Path(loaded_from).resolve()), MODEL_ID_PLACEHOLDER):
        text = text.replace(_python_string(old), new)
    image, copy_to = Path(loaded_from) / CURVES_FILE, Path(save_path) / CURVES_FILE
    if f"({CURVES_FILE})" in text and image.is_file() and image.resolve() != copy_to.resolve():
        shutil.copyfile(image, copy_to)  # the image the card shows goes with it
    return text


def _python_string(value: str) -> str:
    """A double-quoted Python literal of ``value`` (JSON's escapes are Python's): a path with quotes stays code."""
    return json.dumps(value, ensure_ascii=False)


def write_model_card(path: str | os.PathLike, text: str) -> Path:
    """Write ``README.md`` into ``path`` atomically (a reader never sees half a card)."""
    target = Path(path) / README
    tmp = target.with_name(f".{README}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def _dataset_link(dataset: dict[str, str]) -> str:
    name = dataset["name"]
    return f"[{name}](https://huggingface.co/datasets/{dataset['id']})" if dataset.get("id") else name


def _intro(data: CrossEncoderModelCardData, model: Any) -> str:
    base = f" finetuned from [{data.base_model}](https://huggingface.co/{data.base_model})" if data.base_model else ""
    named = [d for d in data.train_datasets if d.get("name")]
    on = ""
    if named:
        links = [_dataset_link(d) for d in named]
        joined = _and_list(links)
        on = f" on the {joined} dataset{'s' if len(links) > 1 else ''}"
    task = data.task_name or (
        "text reranking and semantic search" if model.num_labels == 1 else "text pair classification"
    )
    return (
        f"# {model_name(data)}\n\n"
        f"This is a [Cross Encoder](https://www.sbert.net/docs/cross_encoder/usage/usage.html) model{base}{on}, "
        "trained with crossjax (JAX/Flax) and saved in the "
        "[sentence-transformers](https://www.SBERT.net) format. It computes scores for pairs of texts, which can be "
        f"used for {task}."
    )


def _architecture(model: Any) -> str:
    config = model.config
    architecture = (getattr(config, "architectures", None) or [type(model.model).__name__])[0]
    if not architecture.endswith("ForSequenceClassification"):
        architecture = f"{type(config).__name__.removesuffix('Config')}ForSequenceClassification"
    return architecture


def _model_details(data: CrossEncoderModelCardData, model: Any) -> str:
    from crossjax.losses import activation_name_for_export

    config = model.config
    lines = ["## Model Details", "", "### Model Description", "- **Model Type:** Cross Encoder"]
    if data.base_model:
        revision = f" <!-- at revision {data.base_model_revision} -->" if data.base_model_revision else ""
        lines.append(f"- **Base model:** [{data.base_model}](https://huggingface.co/{data.base_model}){revision}")
    else:
        lines.append("<!-- - **Base model:** [Unknown](https://huggingface.co/unknown) -->")
    lines.append(f"- **Maximum Sequence Length:** {model.max_length} tokens")
    lines.append(f"- **Number of Output Labels:** {model.num_labels} label{'s' if model.num_labels > 1 else ''}")
    lines.append(f"- **Activation Function:** `{activation_name_for_export(model.activation_fn, strict=False)}`")
    lines.append(f"- **Architecture:** {_architecture(model)} (`{config.model_type}`)")
    named = [d for d in data.train_datasets if d.get("name")]
    if named:
        lines.append(f"- **Training Dataset{'s' if len(named) > 1 else ''}:**")
        for d in named:
            lines.append(f"    - {_dataset_link(d)}")
    if data.language:
        lines.append(f"- **Language{'s' if len(data.language) > 1 else ''}:** {', '.join(data.language)}")
    if data.license:
        lines.append(f"- **License:** {data.license}")
    sizes = {
        "layers": getattr(config, "num_hidden_layers", getattr(config, "n_layers", None)),
        "hidden_size": getattr(config, "hidden_size", getattr(config, "dim", None)),
        "attention_heads": getattr(config, "num_attention_heads", getattr(config, "n_heads", None)),
        "intermediate_size": getattr(config, "intermediate_size", getattr(config, "hidden_dim", None)),
        "vocab_size": getattr(config, "vocab_size", None),
        "num_labels": model.num_labels,
    }
    described = ", ".join(f"{k}={v}" for k, v in sizes.items() if v is not None)
    lines += [
        "",
        "### Model Sources",
        "",
        "- **Documentation:** [Sentence Transformers Documentation](https://sbert.net)",
        "- **Documentation:** [Cross Encoder Documentation](https://www.sbert.net/docs/cross_encoder/usage/usage.html)",
        "- **Repository:** [Sentence Transformers on GitHub](https://github.com/huggingface/sentence-transformers)",
        "- **Hugging Face:** [Cross Encoders on Hugging Face](https://huggingface.co/models?library=sentence-transformers&other=cross-encoder)",
        "",
        "### Full Model Architecture",
        "",
        "```",
        "CrossEncoder(",
        f"  (0): {_architecture(model)}({config.model_type}, {described})",
        f"  max_length={model.max_length}, "
        f"activation_fn={activation_name_for_export(model.activation_fn, strict=False)}",
        ")",
        "```",
    ]
    return "\n".join(lines)


def _torch_activation(model: Any) -> str:
    from crossjax.losses import activation_name_for_export

    name = activation_name_for_export(model.activation_fn, strict=False).rsplit(".", 1)[-1]
    return "torch.nn.Softmax(dim=-1)" if name == "Softmax" else f"torch.nn.{name}()"


def _usage(data: CrossEncoderModelCardData, model: Any, location: str) -> str:
    pairs = data.usage_examples or data.usage_pairs()
    scores = data.usage_scores if data.usage_examples is not None else None
    pair_lines = [f"    {list(pair)!r}," for pair in pairs]
    st = [
        "from sentence_transformers import CrossEncoder",
        "",
        f"model = CrossEncoder({_python_string(location)})",
        "# Get scores for pairs of texts",
        "pairs = [",
        *pair_lines,
        "]",
        "scores = model.predict(pairs)",
    ]
    if scores is not None:
        import numpy as np

        with np.printoptions(precision=4):
            st += ["print(scores)", *(f"# {line}" for line in str(np.asarray(scores)).splitlines())]
    else:
        shape = f"({len(pairs)}, {model.num_labels})" if model.num_labels > 1 else f"({len(pairs)},)"
        st += ["print(scores.shape)", f"# {shape}"]
    if model.num_labels == 1:
        st += ["", "# Or rank different texts based on similarity to a single text", "ranks = model.rank("]
        st += [f"    {pairs[0][0]!r},", "    ["]
        st += [f"        {pair[1]!r}," for pair in pairs]
        st += ["    ]", ")", "# [{'corpus_id': ..., 'score': ...}, {'corpus_id': ..., 'score': ...}, ...]"]
    # The saved default prompt, which both CrossEncoder classes prepend to the first text themselves
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name is not None else None
    first_text = f"{_python_string(prompt)} + a" if prompt else "a"
    transformers_lines = [
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f"tokenizer = AutoTokenizer.from_pretrained({_python_string(location)})",
        f"model = AutoModelForSequenceClassification.from_pretrained({_python_string(location)}).eval()",
        "pairs = [",
        *pair_lines,
        "]",
        "features = tokenizer(",
        f"    [{first_text} for a, _ in pairs], [b for _, b in pairs],",
        f'    padding=True, truncation="longest_first", max_length={model.max_length}, return_tensors="pt",',
        ")",
        "with torch.no_grad():",
        f"    scores = {_torch_activation(model)}(model(**features).logits)",
        "print(scores" + (".squeeze(-1))" if model.num_labels == 1 else ")"),
    ]
    crossjax_lines = [
        "from crossjax import CrossEncoder",
        "",
        f"model = CrossEncoder({_python_string(location)})",
        "pairs = [",
        *pair_lines,
        "]",
        "print(model.predict(pairs))",
    ]

    def block(lines: list[str]) -> str:
        return "```python\n" + "\n".join(lines) + "\n```"

    return "\n".join(
        [
            "## Usage",
            "",
            "### Direct Usage (Sentence Transformers)",
            "",
            "First install the Sentence Transformers library:",
            "",
            "```bash\npip install -U sentence-transformers\n```",
            "",
            "Then you can load this model and run inference.",
            block(st),
            "",
            "### Direct Usage (Transformers)",
            "",
            "<details><summary>Click to see the direct usage in Transformers</summary>",
            "",
            block(transformers_lines),
            "",
            "</details>",
            "",
            "### Direct Usage (crossjax, JAX)",
            "",
            block(crossjax_lines),
        ]
    )


def _evaluation(eval_results: dict[Any, dict[str, Any]]) -> str:
    if not eval_results:
        return ""
    lines = ["## Evaluation", "", "### Metrics"]
    for evaluator, raw in eval_results.items():
        metrics, primary = _strip_name(evaluator, raw)
        rows = []
        for key, value in metrics.items():
            value = format_value(_pure(value))
            bold = key == primary
            rows.append({"Metric": f"**{key}**" if bold else key, "Value": f"**{value}**" if bold else value})
        lines += ["", f"#### {_description(evaluator)}", ""]
        if getattr(evaluator, "name", None):
            lines.append(f"* Dataset: `{evaluator.name}`")
        evaluated_with = f"* Evaluated with <code>{_class_path(evaluator)}</code>"
        config = evaluator.get_config_dict() if hasattr(evaluator, "get_config_dict") else None
        if config:
            evaluated_with += " with these parameters:\n  ```json\n" + _indented_json(config) + "\n  ```"
        lines += [evaluated_with, "", markdown_table(rows)]
    return "\n".join(lines)


def _pure(value: Any) -> Any:
    """A numpy or JAX scalar as a Python number."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def _indented_json(config: dict[str, Any]) -> str:
    return "\n".join("  " + line for line in json.dumps(config, indent=4, default=str).splitlines())


def _training_details(data: CrossEncoderModelCardData, model: Any, save_path: str | os.PathLike | None) -> str:
    record = data.training
    if record is None:
        return ""
    lines = ["## Training Details", "", "### Training Dataset" + ("s" if len(record.datasets) > 1 else ""), ""]
    given = next((d["name"] for d in data.train_datasets if d.get("name")), None)
    for one in record.datasets:
        lines += [f"#### {one.name or given or 'Unnamed Dataset'}", ""]
        if one.dataset_size is not None:
            lines.append(f"* Size: {one.dataset_size:,} training samples")
        if one.columns:
            columns = [f"<code>{c}</code>" for c in one.columns]
            joined = _and_list(columns)
            lines.append(f"* Columns: {joined}")
        if one.samples:
            rows = [{f"{k}": _sample_cell(v) for k, v in sample.items()} for sample in one.samples]
            lines.append("* Samples:\n" + "\n".join("  " + line for line in markdown_table(rows).splitlines()))
        if one.loss:
            loss = f"* Loss: <code>{one.loss}</code>"
            if one.loss_config:
                loss += " with these parameters:\n  ```json\n" + _indented_json(one.loss_config) + "\n  ```"
            lines.append(loss)
        lines.append("")
    if record.hyperparameters:
        defaults = record.default_hyperparameters
        non_default = {k: v for k, v in record.hyperparameters.items() if k in defaults and defaults[k] != v}
        lines += ["", "### Training Hyperparameters"]
        if non_default:
            lines += ["#### Non-Default Hyperparameters", ""]
            lines += [f"- `{k}`: {v}" for k, v in non_default.items()]
        lines += ["", "#### All Hyperparameters", "<details><summary>Click to expand</summary>", ""]
        lines += [f"- `{k}`: {v}" for k, v in record.hyperparameters.items()]
        lines += ["", "</details>"]
    table = training_log_table(record, data.eval_results_dict)
    curves = _has_curves(save_path, record)
    if table or curves:
        lines += ["", "### Training Logs"]
        if curves:
            lines += ["", f"![Training loss and evaluation curves]({CURVES_FILE})", ""]
        if table:
            long = table.count("\n") > 101
            if long:
                lines += ["<details><summary>Click to expand</summary>", ""]
            lines.append(table)
            if "**" in table:
                lines.append("\n* The bold row denotes the saved checkpoint.")
            if long:
                lines += ["</details>"]
    if record.training_seconds is not None or record.devices:
        lines += ["", "### Training Time"]
        if record.training_seconds is not None:
            lines.append(f"- **Training**: {format_duration(record.training_seconds)}")
        if record.devices:
            lines.append(f"- **Devices**: {record.devices}")
    return "\n".join(lines)


def _has_curves(save_path: str | os.PathLike | None, record: TrainingRecord) -> bool:
    """Whether the run drew its curves into the folder the card goes to (an image there from an earlier run, or
    drawn by a run that logged elsewhere, is not this model's)."""
    if save_path is None or record.curves_dir is None:
        return False
    here = Path(save_path).expanduser().resolve()
    return here == Path(record.curves_dir).expanduser().resolve() and (here / CURVES_FILE).is_file()


def _sample_cell(value: Any) -> str:
    if isinstance(value, str):
        return f"<code>{value}</code>"
    return f"<code>{format_value(value)}</code>"


def training_log_table(record: TrainingRecord, eval_results: dict[Any, dict[str, Any]]) -> str:
    """sentence-transformers' "Training Logs" table from ``metrics.jsonl``-style records.

    One row per ``logging_steps`` boundary, per evaluation and for the last step; "Training Loss" is the mean
    loss of the steps since the previous logging boundary (as Hugging Face's trainer logs it; "-" on a row that
    only evaluates), "Validation Loss" (or "<dataset> loss" per evaluation dataset) the trainer's evaluation
    loss, the evaluator columns are the primary metrics (all ``eval_*`` metrics when no primary is known), and
    the saved model's step is in bold.
    """
    history = record.log_history
    if not history:
        return ""
    primaries = set()
    for evaluator in eval_results:
        primary = getattr(evaluator, "primary_metric", None)
        if primary:
            primaries.add(EVAL_PREFIX + primary)
    eval_keys = list(dict.fromkeys(k for r in history for k in r if k.startswith(EVAL_PREFIX)))
    loss_keys = [k for k in eval_keys if k.endswith("_loss")]
    metric_keys = [k for k in eval_keys if k not in loss_keys]
    shown = {k: k[len(EVAL_PREFIX) :] for k in [k for k in metric_keys if k in primaries] or metric_keys}
    # sentence-transformers' names: one evaluation loss is the "Validation Loss", several are "<dataset> loss"
    loss_names = {"eval_loss": "Validation Loss"} if loss_keys == ["eval_loss"] else {}
    shown = {k: loss_names.get(k, " ".join(k.split("_")[1:])) for k in loss_keys} | shown
    steps = sorted({int(r["step"]) for r in history})
    last = steps[-1]
    evaluated = {int(r["step"]): r for r in history if any(k.startswith(EVAL_PREFIX) for k in r)}
    losses = {int(r["step"]): r["loss"] for r in history if "loss" in r}
    epochs = {int(r["step"]): r["epoch"] for r in history}
    every = record.logging_steps or 1
    rows, window = [], []
    for step in steps:
        if step in losses:
            window.append(losses[step])
        if not (step % every == 0 or step in evaluated or step == last):
            continue
        if record.steps_per_epoch:
            epoch = round(
                epoch_at(step, record.steps_per_epoch, record.accumulation_steps, record.batches_per_epoch), 4
            )
        else:
            epoch = epochs[step]
        logs_loss = step % every == 0 or step == last
        loss = format_value(sum(window) / len(window)) if window and logs_loss else "-"
        row = {"Epoch": epoch, "Step": step, "Training Loss": loss}
        if logs_loss:
            window = []
        for key, column in shown.items():
            value = evaluated.get(step, {}).get(key)
            row[column] = format_value(value) if value is not None else "-"
        if step == record.best_step:
            row = {k: f"**{v}**" for k, v in row.items()}
        rows.append(row)
    return markdown_table(rows)


def _citations(data: CrossEncoderModelCardData) -> dict[str, str]:
    """BibTeX entries by title, as sentence-transformers' card lists them: Sentence-BERT's, then each training
    loss's that has one (by class name; losses sharing an entry share its title, "A and B")."""
    by_loss = {"Sentence Transformers": SBERT_CITATION}
    for dataset in data.training.datasets if data.training is not None else []:
        if dataset.citation and dataset.loss:
            by_loss[dataset.loss.rsplit(".", 1)[-1]] = dataset.citation
    titles: dict[str, list[str]] = {}
    for loss, citation in by_loss.items():
        titles.setdefault(citation, []).append(loss)
    return {_and_list(names): citation for citation, names in titles.items()}


def _and_list(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _framework_and_citation(data: CrossEncoderModelCardData) -> str:
    versions = framework_versions()
    lines = ["### Framework Versions", *(f"- {name}: {value}" for name, value in versions.items()), ""]
    lines += ["## Citation", "", "### BibTeX"]
    for title, citation in _citations(data).items():
        lines += ["", f"#### {title}", "```bibtex", citation, "```"]
    return "\n".join(lines)


class CardRecorder(RunCallback):
    """The fit loop's callback that records a run into ``model.model_card_data`` (via ``set_training``).

    ``record_setup`` False leaves the data set, loss and hyperparameters to the caller (a trainer that knows
    its ``datasets.Dataset``, loss object and arguments records them with ``set_training`` itself); the
    recorder then only adds the log history, devices, timing and the saved step.

    At the end of a run that saved its best model to ``output_path`` during training, the README there is
    rewritten so its training-log table covers the whole run (with the saved step in bold) and embeds the
    curves PNG; its evaluation section keeps the results of the saved model.
    """

    def __init__(self, model: Any, output_path: str | os.PathLike | None, record_setup: bool = True) -> None:
        self.model = model
        self.output_path = output_path
        self.record_setup = record_setup
        self.records: list[dict[str, Any]] = []
        self.saved_step: int | None = None
        self.saved_eval_results: dict[Any, dict[str, Any]] = {}

    def on_train_begin(self, info: RunInfo) -> None:
        self.started = time.perf_counter()
        self.records = list(info.previous_records)
        setup = {}
        if self.record_setup:  # legacy fit: columns named as sentence-transformers' fit names them
            self.model.model_card_data.training = None  # the card describes this run, not an earlier one
            columns = ["sentence_0", "sentence_1", "label"]
            setup = dict(
                dataset_size=info.train_examples,
                columns=columns,
                samples=[dict(zip(columns, [*texts, label], strict=True)) for texts, label in info.train_samples],
                loss=info.loss,
                loss_config=info.loss_config or {"activation_fct": info.activation},
                args=info.config,
                default_args=info.default_config,
            )
        self.model.model_card_data.set_training(
            **setup,
            log_history=self.records,
            steps_per_epoch=info.steps_per_epoch,
            logging_steps=info.config.get("logging_steps"),
            devices=info.devices,
            curves_dir=info.log_dir,
        )

    def on_log(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def on_evaluate(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.records.append({"step": step, "epoch": epoch, **{EVAL_PREFIX + k: v for k, v in metrics.items()}})

    def on_save(self, step: int) -> None:
        self.saved_step = step
        self.saved_eval_results = {k: dict(v) for k, v in self.model.model_card_data.eval_results_dict.items()}
        self.model.model_card_data.set_training(best_step=step, training_seconds=time.perf_counter() - self.started)

    def on_train_end(self, completed: bool) -> None:
        from crossjax.runtime import is_main_process

        data = self.model.model_card_data
        data.set_training(training_seconds=time.perf_counter() - self.started)
        try:
            if self.saved_step is not None and self.output_path is not None and is_main_process():
                self._complete_saved_card()
        finally:
            # The model in memory is the run's last, not the best one saved at best_step: a later save() of it
            # must not mark that step as its own.
            last_step = max((int(r["step"]) for r in self.records), default=None)
            if data.training is not None and data.training.best_step not in (None, last_step):
                data.training.best_step = None

    def _complete_saved_card(self) -> None:
        if not (Path(self.output_path) / README).is_file():
            return  # the save did not write a card (e.g. it failed): nothing to complete
        try:
            text = generate_model_card(self.model, self.output_path, eval_results=self.saved_eval_results)
        except Exception as e:  # noqa: BLE001 - the model is saved; a card error must not hide the run's outcome
            logger.warning("Could not complete the model card in %s: %s", self.output_path, e)
            return
        write_model_card(self.output_path, text)


__all__ = [
    "CardRecorder",
    "CrossEncoderModelCardData",
    "TrainingRecord",
    "generate_model_card",
    "markdown_table",
    "training_log_table",
    "write_model_card",
]
