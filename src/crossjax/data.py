"""Data handling for cross-encoder training: examples, validation, one-time tokenization, batch planning.

The pipeline is built for static shapes under ``jit``: sentence pairs are tokenized once (ragged, no
padding) and every epoch is planned as lists of example indices; :mod:`crossjax.packing` then lays each
batch's pairs end to end in a few fixed-shape rows.

This module imports numpy only (never torch or jax), so data preparation and validation are cheap and
errors surface before any tokenization or compilation. Tokenizers come in as objects.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from crossjax.runtime import progress_bar

__all__ = [
    "InputExample",
    "DataLoader",
    "CollectedExamples",
    "collect_examples",
    "validate_examples",
    "TokenizedPairs",
    "tokenize_pairs",
    "plan_batches",
    "PaddingStats",
]


# --- examples and loaders ----------------------------------------------------------------------------


@dataclass(repr=False)
class InputExample:
    """One sentence pair with its label, like sentence-transformers' ``InputExample``.

    The field order is sentence-transformers' ``(guid, texts, label)``. Unlike sentence-transformers (whose
    label defaults to ``0``), ``label`` defaults to ``None`` so a forgotten label is reported by
    :func:`validate_examples` (and by the evaluators) instead of silently training on zeros.
    """

    guid: str = ""
    texts: list[str] | tuple[str, ...] | None = None
    label: int | float | None = None

    def __repr__(self) -> str:
        texts = "; ".join(str(t) for t in self.texts) if isinstance(self.texts, (list, tuple)) else str(self.texts)
        return f"<InputExample> label: {self.label}, texts: {texts}"

    __str__ = __repr__


SEED_LIMIT = 2**32


def checked_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int, refused (naming ``name``) unless it is in [0, 2**32): numpy's generators take no negative
    seed, JAX's 32-bit keys would fold a larger one onto a smaller (as Hugging Face's set_seed refuses it)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


class DataLoader:
    """A torch-free stand-in for ``torch.utils.data.DataLoader`` over ``InputExample`` lists.

    Iterating yields lists of examples (a new random order per pass when ``shuffle``). The trainer does
    not iterate it: it reads ``dataset``, ``batch_size``, ``shuffle``, ``drop_last`` and ``seed`` (when given,
    the seed of ``fit``'s data order; else ``fit``'s ``seed``) and plans its own batches.
    """

    def __init__(
        self,
        samples: Sequence[InputExample],
        batch_size: int = 16,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = list(samples)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = None if seed is None else checked_seed(seed, "DataLoader seed")
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[InputExample]]:
        n = len(self.dataset)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            yield [self.dataset[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]

    def __repr__(self) -> str:
        return (
            f"DataLoader({len(self.dataset)} examples, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last})"
        )


_PAIR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sentence1", "sentence2"),
    ("sentence_0", "sentence_1"),
    ("text1", "text2"),
    ("query", "passage"),
    ("query", "document"),
    ("query", "answer"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
)
# sentence-transformers' trainer's label column names (its data collator's ``valid_label_columns``)
LABEL_COLUMNS: tuple[str, ...] = ("label", "labels", "score", "scores")


def python_value(value: Any) -> Any:
    """A numpy, JAX or torch value (a torch-formatted dataset's 0-d tensors, a row's 1-d array) as Python's
    number or list; anything else as it is."""
    return value.tolist() if hasattr(value, "tolist") else value


def python_values(values: Any) -> list[Any]:
    """A column (list, tuple, numpy / JAX / torch array, or a list of their values) as a list of Python values,
    as ``np.asarray`` would read it in sentence-transformers."""
    rows = values.tolist() if hasattr(values, "tolist") else list(values)
    return [python_value(row) for row in rows]


def column_values(dataset: Any, name: str) -> list[Any]:
    """A column of a ``datasets.Dataset`` (or a dict of columns) as a list, read at once: ``datasets`` 4+
    hands out a lazy ``Column`` that, iterated, reads row by row (~100x slower on 100,000 rows)."""
    column = dataset[name]
    if isinstance(column, list):
        return column
    whole = column[:] if hasattr(column, "__getitem__") and not isinstance(column, str) else column
    if hasattr(whole, "tolist") and not isinstance(whole, list):  # numpy arrays, pandas Series: Python values
        whole = whole.tolist()
    return whole if isinstance(whole, list) else list(whole)


def _is_hf_dataset(obj: Any) -> bool:
    return hasattr(obj, "column_names") and hasattr(obj, "features") and not hasattr(obj, "sampler")


def is_text_feature(feature: Any) -> bool:
    """A ``datasets`` column of strings."""
    return getattr(feature, "dtype", None) in ("string", "large_string")


def pair_and_label_columns(
    columns: list[str], is_text: Callable[[str], bool], what: str
) -> tuple[tuple[str, str], str | None]:
    """The two text columns and the label column of a dataset or stream: the pair by name, else the only two
    text columns; the label from a column of :data:`LABEL_COLUMNS` if present."""
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    pair = next((p for p in _PAIR_COLUMNS if p[0] in columns and p[1] in columns), None)
    if pair is None:
        texts = [c for c in columns if c != label and is_text(c)]
        if len(texts) < 2:
            raise ValueError(
                f"could not find two text columns in the {what} (columns {columns}); name them e.g. "
                "'sentence1'/'sentence2' or make them the only two string columns"
            )
        if len(texts) > 2:  # an id or title column beside the pair: guessing would train on the wrong texts
            raise ValueError(
                f"the {what} has {len(texts)} text columns {texts} and none of the known pair names; which two "
                "are the pair is ambiguous: keep only the pair and the label (e.g. ds.select_columns([...])) or "
                "name them e.g. 'sentence1'/'sentence2' (sentence-transformers' trainer refuses more than two "
                "input columns too)"
            )
        pair = (texts[0], texts[1])
    return pair, label


def _refuse_splits(value: Any) -> None:
    """``load_dataset(...)`` without ``split=`` (a ``DatasetDict`` or ``IterableDatasetDict``) named as such."""
    if isinstance(value, dict) and value and all(hasattr(split, "column_names") for split in value.values()):
        raise TypeError(
            f"got a {type(value).__name__} with splits {sorted(value)}; pass one split, e.g. ds['train']"
        )


def _examples_from_hf_dataset(ds: Any) -> list[InputExample]:
    """Read a ``datasets.Dataset`` column-wise into examples (pair columns by name, else the first two
    string columns; the label from a column of :data:`LABEL_COLUMNS` if present)."""
    _refuse_splits(ds)
    columns = ds.column_names
    if columns is None:
        raise TypeError("streaming datasets (IterableDataset) without known columns are not supported")
    pair, label_col = pair_and_label_columns(list(columns), lambda c: is_text_feature(ds.features[c]), "dataset")
    a, b = column_values(ds, pair[0]), column_values(ds, pair[1])
    labels = column_values(ds, label_col) if label_col is not None else [None] * len(a)
    return [InputExample(texts=[x, y], label=lab) for x, y, lab in zip(a, b, labels, strict=True)]


def _dataset_items(dataset: Any) -> list[Any]:
    if _is_hf_dataset(dataset):
        return _examples_from_hf_dataset(dataset)
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return [dataset[i] for i in range(len(dataset))]
    return list(dataset)


class CollectedExamples(NamedTuple):
    """What ``fit`` reads from a data loader; ``seed`` is the loader's own data-order seed, if it has one."""

    examples: list[InputExample]
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int | None = None


def collect_examples(
    train_dataloader: Any, batch_size: int | None = None, shuffle: bool | None = None
) -> CollectedExamples:
    """Extract ``(examples, batch_size, shuffle, drop_last, seed)`` from what users pass to ``fit``.

    Accepts our :class:`DataLoader`; a ``torch.utils.data.DataLoader`` over examples (only its
    ``dataset``/``batch_size``/``sampler`` are read, it is never iterated, so no ``collate_fn`` is
    needed; shuffle means a ``RandomSampler``); a ``datasets.Dataset`` (batch size 16 and shuffle by
    default); or any iterable of example batches (batch size = first batch's size, no shuffle). A flat
    iterable of examples gets batch size 16 and no shuffle. ``batch_size``/``shuffle`` override. ``seed`` is
    ``DataLoader(seed=...)`` or the seed of a torch DataLoader's ``generator``, else None.
    """
    drop_last = False
    seed = None
    if isinstance(train_dataloader, DataLoader):
        ours = train_dataloader
        examples, bs, shuf, drop_last = list(ours.dataset), ours.batch_size, ours.shuffle, ours.drop_last
        seed = ours.seed
    elif _is_hf_dataset(train_dataloader):
        examples = _examples_from_hf_dataset(train_dataloader)
        bs, shuf = 16, True
    elif all(hasattr(train_dataloader, a) for a in ("dataset", "batch_size", "sampler")):  # torch DataLoader
        examples, shuf = _torch_sampler_order(train_dataloader, _dataset_items(train_dataloader.dataset))
        bs = train_dataloader.batch_size
        drop_last = bool(getattr(train_dataloader, "drop_last", False))
        if bs is None:  # DataLoader(batch_sampler=BatchSampler(...)): its batch size and drop_last
            bs = train_dataloader.batch_sampler.batch_size
            drop_last = bool(train_dataloader.batch_sampler.drop_last)
        generator = getattr(train_dataloader, "generator", None)
        seed = int(generator.initial_seed()) if generator is not None else None
    elif hasattr(train_dataloader, "train_examples") and hasattr(train_dataloader, "batch_size"):
        # sentence-transformers' NoDuplicatesDataLoader: shuffles, drops the last partial batch.
        examples = list(train_dataloader.train_examples)
        bs, shuf, drop_last = train_dataloader.batch_size, True, True
    elif isinstance(train_dataloader, Iterable) and not isinstance(train_dataloader, (str, bytes, dict)):
        examples, bs, shuf = [], None, False
        for item in train_dataloader:
            if hasattr(item, "texts"):  # a flat iterable of examples
                examples.append(item)
                bs = 16 if bs is None else bs
            elif not isinstance(item, Iterable):  # None or a number among the examples
                raise ValueError(
                    f"{_where(len(examples), '')}: expected an InputExample with .texts and .label, got "
                    f"{type(item).__name__}"
                )
            else:
                batch = list(item)
                reject_text_row(batch, item)
                bs = len(batch) if bs is None else bs
                examples.extend(batch)
    else:
        _refuse_splits(train_dataloader)
        raise TypeError(
            f"train_dataloader must be a DataLoader, a datasets.Dataset or an iterable of InputExample "
            f"batches, got {type(train_dataloader).__name__}"
        )
    if not examples:
        raise ValueError("train_dataloader is empty: it holds no examples")
    bs = int(batch_size if batch_size is not None else bs)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    shuf = bool(shuffle if shuffle is not None else shuf)
    return CollectedExamples(examples, bs, shuf, drop_last, None if seed is None else int(seed))


def _torch_sampler_order(loader: Any, examples: list) -> tuple[list, bool]:
    """(examples, shuffle) of a torch DataLoader, whose sampler crossjax reads instead of iterating it: a
    sequential or random order of the whole dataset, or a ``SubsetRandomSampler``'s rows shuffled each epoch.
    Any other sampler (weighted, with replacement, a custom batch sampler) chooses rows or batches crossjax
    would not draw, so it is refused rather than silently replaced by plain batches of every row."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = loader.sampler
    if loader.batch_size is None:  # DataLoader(batch_sampler=...): the rows come from that sampler
        if type(batch_sampler).__name__ != "BatchSampler":
            raise ValueError(
                f"DataLoader(batch_sampler={type(batch_sampler).__name__}) chooses batches crossjax cannot follow "
                "(it packs its own batches): pass the examples to train on with batch_size and shuffle instead"
            )
        sampler = batch_sampler.sampler
    name = type(sampler).__name__
    if name == "SubsetRandomSampler":
        return [examples[int(i)] for i in sampler.indices], True
    whole = len(getattr(sampler, "data_source", ())) == len(examples)
    if name == "SequentialSampler" and whole:
        return examples, False
    if name == "RandomSampler" and whole and not sampler.replacement and sampler.num_samples == len(examples):
        return examples, True
    raise ValueError(
        f"DataLoader(sampler={name}) draws rows crossjax would not (it reads a DataLoader's examples and batch "
        "size, and draws its own batches): crossjax follows a sequential or random order of the whole dataset "
        "or a SubsetRandomSampler. Pass the examples to train on instead (e.g. a list of InputExample, repeated "
        "or weighted as you want them sampled)."
    )


def reject_text_row(batch: list, item: Any) -> None:
    """A ``(a, b, label)`` tuple would be read as a batch of three examples and fail on its first string:
    say what it is instead."""
    if batch and isinstance(batch[0], str):
        raise ValueError(
            f"train_dataloader yielded {type(item).__name__} {item!r}: expected InputExample objects (or batches "
            "of them); wrap each row as InputExample(texts=[a, b], label=y)"
        )


# --- validation --------------------------------------------------------------------------------------


def unencodable(text: str) -> str | None:
    """Why a ``str`` cannot be tokenized, else None: a lone UTF-16 surrogate (``json.loads`` makes one of a broken
    escape such as ``"\\ud800"``) is no text in UTF-8, and the tokenizer fails on it without naming the pair."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"holds {text[e.start : e.end]!r} at character {e.start}, a lone surrogate that is not text in UTF-8 "
            "and cannot be tokenized (a broken escape in the data?)"
        )
    return None


def _where(i: int, guid: Any) -> str:
    return f"Example {i} (guid {guid!r})" if guid not in (None, "") else f"Example {i}"


FLOAT32_MAX = float(np.finfo(np.float32).max)


def fits_float32(value: float) -> bool:
    """Finite, and still finite in float32 where the step computes (1e39 is inf there)."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def validate_examples(
    examples: Sequence[Any],
    num_labels: int,
    require_labels: bool = True,
    start: int = 0,
    ignored_label: int | None = None,
) -> tuple[list[str], list[str], np.ndarray]:
    """Check every example and split it into ``(texts_a, texts_b, labels)``.

    Each text loses its surrounding whitespace (``str.strip``), as sentence-transformers' ``old_fit`` collate
    strips it: this is ``fit``'s reader (predict, evaluators and the trainer keep texts as given, as there).
    Raises ``ValueError`` naming the example index (and guid) on the first problem, so bad data fails
    fast, before tokenization or compilation. Regression (``num_labels == 1``) labels become float32;
    classification labels int32 in ``[0, num_labels)`` (integral floats like ``1.0`` are accepted as
    ``1``, ``1.5`` is rejected); ``ignored_label`` (the loss's ``ignore_index``, e.g. torch's -100) is kept as
    is for the loss to skip. Without ``require_labels`` missing labels become 0. ``start`` is the number of the
    first example in messages (a stream's examples are checked a few at a time).
    """
    if int(num_labels) < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    classification = num_labels > 1
    texts_a: list[str] = []
    texts_b: list[str] = []
    labels = np.zeros(len(examples), dtype=np.int32 if classification else np.float32)
    for i, ex in enumerate(examples):
        guid = getattr(ex, "guid", "")
        where = _where(start + i, guid)
        if not hasattr(ex, "texts"):
            raise ValueError(f"{where}: expected an InputExample with .texts and .label, got {type(ex).__name__}")
        texts = ex.texts
        if texts is None or isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
            raise ValueError(f"{where}: texts must be a list of exactly 2 strings, got {texts!r}")
        if len(texts) != 2:
            raise ValueError(f"{where}: expected exactly 2 texts, got {len(texts)}")
        for j, t in enumerate(texts):
            if t is None:
                raise ValueError(f"{where}: text {j} is None")
            if not isinstance(t, str):
                raise ValueError(f"{where}: text {j} must be a string, got {type(t).__name__} {t!r}")
            if (reason := unencodable(t)) is not None:
                raise ValueError(f"{where}: text {j} {reason}")
        # Surrounding whitespace stripped, as sentence-transformers' old_fit collate does (byte-level BPE
        # tokenizers, RoBERTa's and ModernBERT's, would otherwise train on whitespace tokens that it never sees).
        texts_a.append(texts[0].strip())
        texts_b.append(texts[1].strip())

        label = ex.label
        if label is None:
            if require_labels:
                raise ValueError(
                    f"{where}: missing label (label is None; a dataset's or stream's label column is named "
                    f"{', '.join(LABEL_COLUMNS)})"
                )
            continue
        if getattr(label, "ndim", None) == 0:  # numpy / JAX / torch scalars
            label = python_value(label)
        if isinstance(label, (bool, np.bool_)):
            raise ValueError(f"{where}: label {label!r} is a bool; use an int (0/1) or a float")
        if not isinstance(label, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where}: label must be a number, got {type(label).__name__} {label!r}")
        if not fits_float32(float(label)):
            raise ValueError(f"{where}: label is {label} (labels must be finite numbers that float32 can hold)")
        if classification:
            if isinstance(label, (float, np.floating)) and not float(label).is_integer():
                raise ValueError(
                    f"{where}: label {label!r} is not a class index; num_labels={num_labels} means "
                    f"classification with int labels 0..{num_labels - 1} (use int(label), or num_labels=1 "
                    "for regression)"
                )
            value = int(label)
            if not 0 <= value < num_labels and value != ignored_label:
                ignored = ""
                if value == -100 and ignored_label is not None:
                    ignored = f" (this run's cross-entropy leaves out label {ignored_label}, its ignore_index)"
                elif value == -100:
                    ignored = (
                        " (-100 is torch's ignore_index: only the cross-entropy loss skips such rows, and this "
                        "run's loss is another)"
                    )
                raise ValueError(f"{where}: label {label!r} is out of range for num_labels={num_labels}{ignored}")
            labels[i] = value
        else:
            labels[i] = float(label)
    return texts_a, texts_b, labels


# --- tokenization ------------------------------------------------------------------------------------


class _Ragged(Sequence):
    """A read-only view of one ragged field: ``view[i]`` is example ``i``'s int32 array."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self._flat = flat
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._flat[self._offsets[i] : self._offsets[i + 1]]


@dataclass
class TokenizedPairs:
    """Unpadded token ids of all pairs, stored flat with offsets (cheap for millions of pairs)."""

    flat_input_ids: np.ndarray  # int32 [total_tokens]
    flat_token_type_ids: np.ndarray  # int32 [total_tokens]
    offsets: np.ndarray  # int64 [N + 1]; example i is flat[offsets[i]:offsets[i + 1]]
    lengths: np.ndarray  # int32 [N]
    max_length: int

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def input_ids(self) -> _Ragged:
        return _Ragged(self.flat_input_ids, self.offsets)

    @property
    def token_type_ids(self) -> _Ragged:
        return _Ragged(self.flat_token_type_ids, self.offsets)


def token_limits(config: Any) -> tuple[int, int | None]:
    """(vocabulary size, token-type vocabulary size or None without token-type embeddings): the ids a model's
    embedding tables hold."""
    types = getattr(config, "type_vocab_size", None)
    return int(config.vocab_size), (int(types) if types else None)


def _check_token_ids(ids: np.ndarray, types: np.ndarray, lens: np.ndarray, start: int, limits) -> None:
    """An id past an embedding table would read NaN (JAX fills out-of-range gathers) and, through packed
    attention, turn every pair of its batch into NaN: name the pair instead, as PyTorch's IndexError would."""
    for values, limit, what in ((ids, limits[0], "token id"), (types, limits[1], "token type id")):
        if limit is None or not values.size:
            continue
        bad = np.flatnonzero((values >= limit) | (values < 0))
        if bad.size:
            pair = start + int(np.searchsorted(np.cumsum(lens), bad[0], side="right"))
            raise ValueError(
                f"pair {pair}: {what} {int(values[bad[0]])} is outside the model's table of {limit}: the "
                "tokenizer does not match this model (or has added tokens it was not resized for)"
            )


def _name_untokenizable(texts_a: list, texts_b: list, start: int) -> None:
    """After the tokenizer failed: raise an error naming the first pair whose text cannot be tokenized (the
    tokenizer's own, ``TextInputSequence must be str``, names none); return where no text explains it."""
    for i, pair in enumerate(zip(texts_a, texts_b, strict=True)):
        for j, text in enumerate(pair):
            reason = unencodable(text) if isinstance(text, str) else f"is a {type(text).__name__}, not a string"
            if reason is not None:
                raise ValueError(f"pair {start + i}: text {j} {reason}") from None


# tokenizers' longest_first truncation of a pair builds every overflow window of both texts and keeps their
# product: two 30,000-word texts at max_length 512 take 5 s and 5 GB for one pair (huggingface/tokenizers#2035; a
# batch of such pairs is killed for memory). Where both texts of a pair are longer than this many characters per
# token of max_length, each is first cut to a part holding the tokens the truncation can keep (checked below).
LONG_TEXT_CHARS_PER_TOKEN = 16  # below ~10 the cut's own tokenization costs more than the windows it spares
_WHITESPACE = re.compile(r"\s")
_EDGE_MARGIN = 16  # tokens kept past the last one read where a text is cut at a token's edge, not a whitespace


def _cut_keeping_tokens(tokenizer: Any, texts: list[str], count: int, from_end: bool) -> list[tuple[str, int, int]]:
    """``(cut, tokens of the text, tokens of the cut)`` per text: the text cut at a whitespace (in text without
    one, such as Chinese, at a token's edge ``_EDGE_MARGIN`` tokens further) to a part whose tokens start
    (``from_end``: end) with the text's own first (last) ``count`` tokens and number at least ``count``. A text
    whose cut does not tokenize so (a tokenizer reading across the cut) is its own cut."""
    full = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = [(text, len(ids), len(ids)) for text, ids in zip(texts, full["input_ids"], strict=True)]
    tried: dict[int, str] = {}
    edge = count + _EDGE_MARGIN
    for i, (text, ids, offsets) in enumerate(zip(texts, full["input_ids"], full["offset_mapping"], strict=True)):
        if len(ids) <= count:
            continue
        if from_end:
            start = min(begin for begin, _ in offsets[-count:])
            spaces = [m.end() for m in _WHITESPACE.finditer(text, 0, start)]
            if spaces:
                tried[i] = text[spaces[-1] :]
            elif len(ids) > edge:
                tried[i] = text[min(begin for begin, _ in offsets[-edge:]) :]
        else:
            space = _WHITESPACE.search(text, max(stop for _, stop in offsets[:count]))
            if space:
                tried[i] = text[: space.start()]
            elif len(ids) > edge:
                tried[i] = text[: max(stop for _, stop in offsets[:edge])]
    if tried:
        again = tokenizer(list(tried.values()), add_special_tokens=False, verbose=False)["input_ids"]
        for (i, cut), ids in zip(tried.items(), again, strict=True):
            own = full["input_ids"][i]
            if len(ids) >= count and (ids[-count:] == own[-count:] if from_end else ids[:count] == own[:count]):
                out[i] = (cut, len(own), len(ids))
    return out


def _spare_pair_windows(tokenizer: Any, texts_a: list, texts_b: list, max_length: int) -> tuple[list, list]:
    """``texts_a``/``texts_b`` with the pairs whose texts are both long cut as :func:`_cut_keeping_tokens` cuts.
    longest_first keeps at most ``max_length`` tokens of a text, and splits an odd budget by which text is longer
    (transformers' ``(8, 9)`` for ``n1 <= n2``, ``(9, 8)`` otherwise): a pair takes both cuts only where they keep
    that order, else the longer text stays whole. Plain data (no text over ``LONG_TEXT_CHARS_PER_TOKEN *
    max_length`` characters) is untouched."""
    limit = LONG_TEXT_CHARS_PER_TOKEN * max_length
    both_long = [
        i for i, (a, b) in enumerate(zip(texts_a, texts_b, strict=True))
        if isinstance(a, str) and isinstance(b, str) and len(a) > limit and len(b) > limit
    ]  # fmt: skip
    if not both_long:
        return texts_a, texts_b
    from_end = getattr(tokenizer, "truncation_side", "right") == "left"
    keep = max_length + 8  # more than any side keeps: the split's inputs stay above what it reads
    cuts_a = _cut_keeping_tokens(tokenizer, [texts_a[i] for i in both_long], keep, from_end)
    cuts_b = _cut_keeping_tokens(tokenizer, [texts_b[i] for i in both_long], keep, from_end)
    texts_a, texts_b = list(texts_a), list(texts_b)
    for i, (cut_a, full_a, kept_a), (cut_b, full_b, kept_b) in zip(both_long, cuts_a, cuts_b, strict=True):
        if full_a > full_b:  # the first stays the longer: cut it only if its cut still is
            texts_b[i] = cut_b
            texts_a[i] = cut_a if kept_a > kept_b else texts_a[i]
        else:  # the second stays at least as long
            texts_a[i] = cut_a
            texts_b[i] = cut_b if kept_b >= kept_a else texts_b[i]
    return texts_a, texts_b


def tokenize_pairs(
    tokenizer: Any,
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    max_length: int,
    chunk_size: int = 10_000,
    limits: tuple[int, int | None] | None = None,
    progress: bool | None = False,
) -> TokenizedPairs:
    """Tokenize all pairs once with a Hugging Face (fast) tokenizer, ``truncation="longest_first"`` like
    ``CrossEncoder``, without padding; chunks bound the peak memory of Python lists. ``limits``
    (:func:`token_limits` of the model) checks every id against the model's embedding tables. ``progress``
    shows a bar for inputs of several chunks (a million pairs take about a minute before a fit's first step)."""
    if len(texts_a) != len(texts_b):
        raise ValueError(f"texts_a and texts_b differ in length: {len(texts_a)} vs {len(texts_b)}")
    ids_parts: list[np.ndarray] = []
    type_parts: list[np.ndarray] = []
    len_parts: list[np.ndarray] = []
    starts = range(0, len(texts_a), chunk_size)
    if progress is not False and len(starts) > 2:
        starts = progress_bar(starts, enabled=progress, desc="Tokenizing", unit="chunk", leave=False)
    for start in starts:
        chunk_a, chunk_b = list(texts_a[start : start + chunk_size]), list(texts_b[start : start + chunk_size])
        try:
            cut_a, cut_b = _spare_pair_windows(tokenizer, chunk_a, chunk_b, max_length)
            enc = tokenizer(
                cut_a,
                cut_b,
                truncation="longest_first",
                max_length=max_length,
                padding=False,
                # token types only where the tokenizer gives them (its ``model_input_names``), as
                # sentence-transformers feeds them; otherwise every token is type 0, as transformers' models default to
                return_attention_mask=False,
            )
        except Exception:
            _name_untokenizable(chunk_a, chunk_b, start)
            raise
        ids = enc["input_ids"]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
        if len(lens) and int(lens.max()) > max_length:  # a long pair would run past the position table
            raise ValueError(
                f"pair {start + int(np.argmax(lens))} has {int(lens.max())} tokens after truncation to "
                f"max_length={max_length}: the tokenizer cannot truncate a pair below its special tokens"
            )
        total = int(lens.sum())
        ids_parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=total))
        types = enc.get("token_type_ids") if hasattr(enc, "get") else None
        if types is None:
            type_parts.append(np.zeros(total, dtype=np.int32))
        else:
            type_parts.append(np.fromiter(itertools.chain.from_iterable(types), dtype=np.int32, count=total))
        if limits is not None:
            _check_token_ids(ids_parts[-1], type_parts[-1], lens, start, limits)
        len_parts.append(lens)
    lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenizedPairs(
        flat_input_ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
        flat_token_type_ids=np.concatenate(type_parts) if type_parts else np.zeros(0, np.int32),
        offsets=offsets,
        lengths=lengths,
        max_length=int(max_length),
    )


# --- batch planning -----------------------------------------------------------------------------------


def _chunks(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def plan_batches(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    group_by_length: bool = True,
    megabatch_mult: int = 50,
    loader_batch_size: int | None = None,
) -> list[np.ndarray]:
    """One epoch's batches as arrays of example indices (only the last may be partial).

    ``loader_batch_size``: the DataLoader's batch, where a batch here is an optimizer step of several accumulated
    ones; ``drop_last`` then drops what the loader's drops, its last partial batch, so a last step of fewer
    accumulated batches keeps its full ones (Hugging Face's rule, and the trainer's).

    Without ``shuffle``: sequential order, exactly the batches sentence-transformers would see. With
    ``shuffle`` and ``group_by_length``: like HF's ``LengthGroupedSampler`` — a seeded permutation is cut
    into megabatches of ``batch_size * megabatch_mult``, each sorted by length (descending) and split
    into batches, whose order is then shuffled (the partial batch stays last). Examples in a batch then
    have similar lengths, so far less padding is computed. Depends only on ``(seed, epoch)``.
    """
    if drop_last and loader_batch_size is not None and loader_batch_size < batch_size:
        steps = plan_batches(lengths, batch_size, shuffle, seed, epoch, False, group_by_length, megabatch_mult)
        kept = len(steps[-1]) // loader_batch_size * loader_batch_size if steps else 0
        return steps[:-1] + [steps[-1][:kept]] if kept else steps[:-1]
    lengths = np.asarray(lengths)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    if not shuffle:
        return _chunks(np.arange(n, dtype=np.int64), batch_size, drop_last)
    rng = np.random.default_rng((int(seed), int(epoch)))
    perm = rng.permutation(n).astype(np.int64)
    if not group_by_length:
        return _chunks(perm, batch_size, drop_last)
    mega = batch_size * max(1, int(megabatch_mult))
    full: list[np.ndarray] = []
    partial: list[np.ndarray] = []
    for start in range(0, n, mega):
        mb = perm[start : start + mega]
        mb = mb[np.argsort(-lengths[mb], kind="stable")]
        for batch in _chunks(mb, batch_size, drop_last=False):
            (full if len(batch) == batch_size else partial).append(batch)
    # Megabatches are multiples of batch_size, so at most one partial batch exists (the last one).
    order = rng.permutation(len(full))
    batches = [full[i] for i in order]
    if partial and not drop_last:
        batches.append(partial[0])
    return batches


# --- collation ---------------------------------------------------------------------------------------


@dataclass
class PaddingStats:
    """Accumulates how much of the computed tokens were real (to report the cost of padding)."""

    real_tokens: int = 0
    computed_tokens: int = 0

    def add(self, batch) -> None:
        """Count a :class:`crossjax.packing.PackedBatch`."""
        self.real_tokens += batch.real_tokens
        self.computed_tokens += batch.computed_tokens

    @property
    def efficiency(self) -> float:
        """Real tokens / computed tokens (1.0 = no padding at all)."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0
