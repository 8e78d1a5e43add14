"""Streaming input for ``fit``: a ``datasets.IterableDataset`` or a generator of examples of any size.

A stream is read once, in order, by a background thread that validates each example, tokenizes one step
(``batch_size * gradient_accumulation_steps`` examples) at a time with a private copy of the fast tokenizer
(``truncation="longest_first"``, ``max_length``) and hands the steps over through a bounded queue, so memory
does not grow with the size of the data set. A bad example is reported (``ValueError`` naming its number in
the stream) in the main thread, before the step that would hold it.

**Shuffling** (``shuffle_buffer_size=B > 0``): a seeded *block* shuffle. The stream is cut into blocks of
``B`` examples and each block is permuted with ``numpy.random.default_rng((seed, block))``; the order depends
only on the seed and ``B``, and a resume can rebuild the block it stopped in. ``B = 0`` (the default) keeps
the stream's order.

**Data position**: the number of examples handed to the train step (``global step x step size``) is stored
in each checkpoint; a resume re-opens the stream and skips exactly that many examples (``IterableDataset.skip``
where available, else reading and dropping them).

**Multi-host** (``jax.process_count() = P > 1``): process ``p`` reads only its own shard and tokenizes only
its own examples, ``step_rows / P`` of each step, packed into the groups its devices hold. A
``datasets.IterableDataset`` is split with ``datasets.distributed.split_dataset_by_node`` (whole files per
process when the file count divides by ``P``, else every ``P``-th example of a stream that each process
still reads); any other stream (a torch iterable dataset, a generator) is still *read* whole by every
process, which keeps every ``P``-th item from item ``p`` on and tokenizes only those. Shuffling permutes each
process's own shard (blocks seeded with ``(seed, p, block)``).

The shapes are agreed without communication. Every process plans from the same data: the first
``STREAM_LOOKAHEAD`` steps of the *global* (unsharded) stream, read and tokenized once for planning only
(a resume takes the plan from the checkpoint), into one shape, ``R`` rows of ``T`` tokens per group, with
``T`` at least ``max_length`` (rounded up to 8) so that every pair the tokenizer can produce fits a row.
Every step has that shape. A process fills a step with its examples in stream order, the ones deferred by the
previous step first; the longest prefix that fits its groups (:func:`crossjax.packing.fitting_prefix`) is
trained and the suffix that does not fit is deferred to its next step, so its data position stays one
number (examples trained) and the stream order is kept. The loss is normalised by the pairs actually in the
step (empty slots are masked).

A process whose shard is exhausted feeds empty groups (steps still need all processes) and reads back each
such step's global pair count; a step in which no process had a pair leaves the model unchanged (see
:func:`crossjax.training.make_train_step`) and ends the run on every process at once. A process whose shard
fails (a bad example, a read error) feeds empty steps flagged ``abort`` instead of raising, and every process
stops after the same steps (``crossjax.fit_loop._StreamData._shard_steps``). Each checkpoint
stores every process's data position (gathered when saving, which is collective anyway), and a resume
restarts each process at its own.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossjax import data as data_lib

__all__ = [
    "StreamSource",
    "as_stream",
    "BackgroundReader",
    "StreamReader",
    "read_ahead",
    "deferring_steps",
    "concat_pairs",
    "slice_pairs",
]


def is_datasets_stream(obj: Any) -> bool:
    """A ``datasets.IterableDataset`` (without importing ``datasets``: a stream of it means it is imported)."""
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, datasets.IterableDataset)


def _is_torch_iterable_dataset(obj: Any) -> bool:
    torch_data = sys.modules.get("torch.utils.data")
    return torch_data is not None and isinstance(obj, torch_data.IterableDataset)


@dataclass
class StreamSource:
    """A stream ``fit`` reads: the object, its batch size (None: fit's default) and a short description.

    ``shard = (p, P)`` reads only process ``p``'s share of ``P`` (see the module docstring)."""

    source: Any
    batch_size: int | None
    description: str
    shard: tuple[int, int] = (0, 1)
    drop_last: bool = False  # a DataLoader's drop_last: the stream's last partial batch is not trained

    @classmethod
    def of_datasets(cls, stream: Any) -> StreamSource:
        """A ``datasets.IterableDataset``, described by its columns."""
        return cls(stream, None, f"datasets.IterableDataset{_columns(stream)}")

    def open(self, skip: int) -> Iterator[Any]:
        """Iterate the stream's items (examples or rows) from item ``skip`` (of this shard) on."""
        index, count = self.shard
        source = self.source
        if count > 1 and is_datasets_stream(source):
            from datasets.distributed import split_dataset_by_node

            source = split_dataset_by_node(source, rank=index, world_size=count)
        elif count > 1:  # read whole, every count-th item kept
            source = itertools.islice(iter(source), index, None, count)
        if skip and is_datasets_stream(source) and hasattr(source, "skip"):
            return iter(source.skip(skip))
        return itertools.islice(iter(source), skip, None)

    def examples(self, skip: int) -> Iterator[Any]:
        """The stream's examples (rows and batches taken apart) from example ``skip`` (of this shard) on: a
        checkpoint's data position counts examples, whatever the items are."""
        features = getattr(self.source, "features", None) if is_datasets_stream(self.source) else None
        if is_datasets_stream(self.source):  # rows are examples: datasets skips them fast
            return _flatten(self.open(skip), features)
        return itertools.islice(_flatten(self.open(0), features), skip, None)

    def sharded(self, index: int, count: int) -> StreamSource:
        """This stream's shard ``index`` of ``count``."""
        return dataclasses.replace(self, shard=(int(index), int(count)))

    def read_twice(self) -> tuple[StreamSource, StreamSource]:
        """Two sources of the same items: a one-shot iterator is split with ``itertools.tee`` (which holds only
        the items one copy has read and the other not yet); datasets and torch datasets are re-iterable."""
        if not isinstance(self.source, Iterator):
            return self, self
        first, second = itertools.tee(self.source)
        return dataclasses.replace(self, source=first), dataclasses.replace(self, source=second)


def as_stream(train_dataloader: Any, batch_size: int | None = None) -> StreamSource | None:
    """The stream in ``train_dataloader``, or None for in-memory inputs (lists, DataLoaders, ``datasets.Dataset``).

    Streams are a ``datasets.IterableDataset``, a torch ``IterableDataset``, an iterator or generator (no
    length), and a torch DataLoader over an iterable dataset (its ``batch_size`` and ``drop_last`` are used; it is
    never iterated). A stream of batches (lists of examples) without a batch size of its own (nor ``batch_size``,
    fit's) has that of its first batch, as a list of batches does: a torch dataset is then started once more to
    read it.
    """
    if is_datasets_stream(train_dataloader):
        return StreamSource.of_datasets(train_dataloader)
    dataset = getattr(train_dataloader, "dataset", None)
    if hasattr(train_dataloader, "sampler") and (
        is_datasets_stream(dataset) or _is_torch_iterable_dataset(dataset)
    ):
        size = train_dataloader.batch_size
        description = f"DataLoader over {type(dataset).__name__}{_columns(dataset)}"
        if size is None and batch_size is None and _is_torch_iterable_dataset(dataset):
            dataset, size = _probe_batch_length(dataset)
        return StreamSource(dataset, size, description, drop_last=bool(getattr(train_dataloader, "drop_last", False)))
    if _is_torch_iterable_dataset(train_dataloader):
        source, size = (train_dataloader, None) if batch_size is not None else _probe_batch_length(train_dataloader)
        return StreamSource(source, size, f"{type(train_dataloader).__name__} (torch IterableDataset)")
    if isinstance(train_dataloader, Iterator):  # one-shot: its probed first item is kept in front
        source, size = _probe_batch_length(train_dataloader)
        return StreamSource(source, size, f"iterator {type(train_dataloader).__name__}")
    return None


def _probe_batch_length(dataset: Any) -> tuple[Any, int | None]:
    """(the source to read, the batch length of ``dataset``'s first item): a dataset that makes a fresh iterator
    each time is read from its start again; an iterator, or a dataset whose iterator is one-shot (``__iter__``
    returns itself or the same generator), keeps the probed item in front of the rest, so none is lost."""
    items = iter(dataset)
    first = next(items, None)
    if iter(dataset) is items:
        return itertools.chain([] if first is None else [first], items), _batch_length(first)
    return dataset, _batch_length(first)


def _is_batch(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and not hasattr(item, "texts")


def _batch_length(item: Any) -> int | None:
    """The length of a stream's first item when it is a batch of examples (not a pair of texts), else None."""
    if _is_batch(item) and item and not all(isinstance(x, str) for x in item):
        return len(item)
    return None



def data_file_names(ds: Any) -> list[str] | None:
    """The names of the files a ``datasets`` stream reads (``load_dataset(..., data_files=...)``), or None where
    they cannot be found. Best effort, through ``datasets``' iterables (not a public API): what a resume
    fingerprint can check beyond the columns, so that another file with the same columns is not resumed."""
    iterable = getattr(ds, "_ex_iterable", None)
    for _ in range(32):  # .map/.shuffle/.skip wrap the file iterable
        if iterable is None:
            return None
        files = (getattr(iterable, "kwargs", None) or {}).get("original_files")
        if isinstance(files, (list, tuple)) and all(isinstance(f, str) for f in files):
            return [os.path.basename(f) for f in files]
        iterable = getattr(iterable, "ex_iterable", None)
    return None


def shuffle_fingerprint(ds: Any) -> str | None:
    """A hash of the shuffle generators of a ``datasets`` stream (``IterableDataset.shuffle``) as it was made, or
    None for an unshuffled one. Best effort, through ``datasets``' iterables (not a public API): a stream
    shuffled without a seed draws another order each time it is made, which a resume must not take for the
    run's own."""
    found, iterable = [], getattr(ds, "_ex_iterable", None)
    for _ in range(32):
        if iterable is None:
            break
        generator = getattr(iterable, "generator", None)
        if isinstance(generator, np.random.Generator):
            found.append(repr(generator.bit_generator.state))
        iterable = getattr(iterable, "ex_iterable", None)
    if not found:
        return None
    import hashlib

    return hashlib.sha256("|".join(found).encode()).hexdigest()[:16]


def _columns(ds: Any) -> str:
    """A stream's columns for its description (nothing when it has none, as a torch dataset)."""
    columns = getattr(ds, "column_names", None)
    return f" {list(columns)}" if isinstance(columns, (list, tuple)) else ""



class _RowReader:
    """Turns rows (dicts of a ``datasets.IterableDataset``) into examples, columns found as
    :func:`crossjax.data.collect_examples` finds them for a ``datasets.Dataset``: by the stream's schema
    (``features``) where it has one, else by the first row's value types."""

    def __init__(self, features: Any = None) -> None:
        self.pair: tuple[str, str] | None = None
        self.label: str | None = None
        self.features = features

    def __call__(self, row: Any) -> Any:
        if not isinstance(row, dict):
            return row
        if self.pair is None:
            self.pair, self.label = data_lib.pair_and_label_columns(
                list(row), lambda c: self._is_text(c, row[c]), "stream"
            )
        label = row.get(self.label) if self.label is not None else None
        return data_lib.InputExample(texts=[row.get(self.pair[0]), row.get(self.pair[1])], label=label)

    def _is_text(self, column: str, value: Any) -> bool:
        feature = self.features.get(column) if self.features else None
        if feature is not None:  # a null first value does not hide a text column
            return data_lib.is_text_feature(feature)
        return isinstance(value, str)


def _flatten(items: Iterable[Any], features: Any = None) -> Iterator[Any]:
    """Examples one by one: rows become examples, batches (lists of examples) are flattened."""
    to_example = _RowReader(features)
    for item in items:
        if _is_batch(item):
            data_lib.reject_text_row(list(item), item)
            yield from (to_example(x) for x in item)
        else:
            yield to_example(item)


@dataclass
class StreamStep:
    """One step's examples, tokenized: ``tokenized`` holds them in order, ``labels`` likewise."""

    tokenized: data_lib.TokenizedPairs
    labels: np.ndarray
    end: int  # examples handed over once this step is trained (the data position)


class BackgroundReader:
    """Items that ``produce()`` (a generator) makes in a daemon thread, at most ``prefetch`` ahead of the caller:
    ``next_step()`` returns the next item, None at the end, and raises the generator's error in the caller's
    thread (before the step that would hold the bad item)."""

    def __init__(self, produce: Callable[[], Iterator[Any]], prefetch: int = 4, name: str = "crossjax-stream") -> None:
        self.produce = produce
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.done = False
        self.thread.start()

    # -- the background thread
    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.produce():
                if not self._put(item):
                    return
            self._put(None)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread, before the step
            self._put(e)

    # -- the main thread
    def next_step(self) -> Any:
        if self.done:
            return None
        while True:
            try:
                item = self.queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    self.done = True
                    return None
        if item is None:
            self.done = True
            return None
        if isinstance(item, BaseException):
            self.done = True
            raise item
        return item

    def take(self, count: int) -> list[Any]:
        """Up to ``count`` next items (fewer at the end): a run's lookahead, planned on before compiling."""
        items: list[Any] = []
        while len(items) < count and (item := self.next_step()) is not None:
            items.append(item)
        return items

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def read_ahead(read: Callable[[], Any], count: int) -> Iterator[tuple[Any, bool, Exception | None]]:
    """Up to ``count`` items of ``read()`` (None: the end) as ``(item, last, failure)``: whether an item is the
    last is known by reading the next one first. An error reading the next item comes as ``failure`` with the
    current one, so that the caller trains that step before raising it (before the step that would hold it)."""
    upcoming = read() if count > 0 else None
    taken = 0
    while upcoming is not None:
        item, taken, failure = upcoming, taken + 1, None
        try:
            upcoming = read() if taken < count else None
        except Exception as e:  # noqa: BLE001 - handed to the caller, raised after this item's step
            upcoming, failure = None, e
        yield item, upcoming is None and failure is None, failure


class StreamReader(BackgroundReader):
    """``fit``'s background reader: ``next_step()`` returns the next :class:`StreamStep`, or None at the end.

    ``start`` examples (already trained on, from a checkpoint) are skipped. With ``shuffle_buffer_size``,
    the block holding ``start`` is rebuilt and its first examples dropped, so the order is the same as
    without the interruption. A step is ``accumulated_batches`` batches: the source's ``drop_last`` drops the
    last partial batch only, so a last step keeps its full ones (as for data in memory).
    """

    def __init__(
        self,
        source: StreamSource,
        tokenizer: Any,
        max_length: int,
        num_labels: int,
        step_size: int,
        max_steps: int,
        start: int = 0,
        shuffle_buffer_size: int = 0,
        seed: int | tuple[int, ...] = 0,
        prefetch: int = 4,
        name: str = "crossjax-stream",
        limits: tuple[int, int | None] | None = None,
        accumulated_batches: int = 1,
        ignored_label: int | None = None,
    ) -> None:
        self.source = source
        self.ignored_label = ignored_label  # the loss's ignore_index (data.validate_examples)
        self.batch_rows = step_size // accumulated_batches  # the DataLoader's batch (in this process's shard)
        self.limits = limits  # the model's embedding table sizes (data.token_limits), checked per batch
        self.tokenizer = copy.deepcopy(tokenizer)  # the main thread's evaluators may tokenize meanwhile
        self.max_length = max_length
        self.num_labels = num_labels
        self.step_size = step_size
        self.max_steps = max_steps
        self.dropped = 0  # examples of a last partial batch that drop_last dropped (set before the end is put)
        self.first_examples: list[tuple[list[str], Any]] = []  # the first few (texts, label): logs, model card
        self.start = start
        self.block = int(shuffle_buffer_size)
        self.seed = (int(seed),) if isinstance(seed, (int, np.integer)) else tuple(int(x) for x in seed)
        super().__init__(self._steps, prefetch, name)

    def _ordered(self) -> Iterator[tuple[int, Any]]:
        """(number in the stream, example) in training order, from the data position ``start`` on."""
        if self.block <= 0:
            yield from enumerate(self.source.examples(self.start), start=self.start)
            return
        block_index = self.start // self.block
        first = block_index * self.block
        items = enumerate(self.source.examples(first), start=first)
        drop = self.start - first
        while True:
            chunk = list(itertools.islice(items, self.block))
            if not chunk:
                return
            order = np.random.default_rng((*self.seed, block_index)).permutation(len(chunk))
            for position in order[drop:]:
                yield chunk[int(position)]
            drop = 0
            block_index += 1

    def _steps(self) -> Iterator[StreamStep]:
        position = self.start
        ordered = self._ordered()
        for _ in range(self.max_steps):
            chunk = list(itertools.islice(ordered, self.step_size))
            if self.source.drop_last and len(chunk) < self.step_size:  # the DataLoader drops its last partial batch
                kept = len(chunk) // self.batch_rows * self.batch_rows
                self.dropped = len(chunk) - kept
                del chunk[kept:]
            if not chunk:
                return
            texts_a, texts_b, parts = [], [], []
            for number, example in chunk:
                a, b, label = data_lib.validate_examples(
                    [example], self.num_labels, start=number, ignored_label=self.ignored_label
                )
                if len(self.first_examples) < 3:
                    self.first_examples.append(([a[0], b[0]], label.tolist()[0]))
                texts_a += a
                texts_b += b
                parts.append(label)
            labels = np.concatenate(parts)
            tokenized = data_lib.tokenize_pairs(self.tokenizer, texts_a, texts_b, self.max_length, limits=self.limits)
            position += len(chunk)
            yield StreamStep(tokenized, labels, position)
            if len(chunk) < self.step_size:
                return


def plan_from_steps(
    steps: list[StreamStep],
    groups: int,
    pairs: int,
    hidden_size: int,
    max_shapes: int,
    min_row_length: int = 0,
    compile_cost: float | None = None,
):
    """The packing plan of a run planned from its first steps (the lookahead), with as many row lengths as pay
    for their compiles (``compile_cost``, see :func:`crossjax.packing.plan_call`). With ``min_row_length`` (a
    multi-host run's ``max_length``), rows are at least that long, so any later pair fits one: ``R`` is then the
    most rows the planning steps need at that length."""
    from crossjax import packing

    lengths = np.concatenate([s.tokenized.lengths for s in steps]) if steps else np.zeros(0, np.int32)
    bounds = np.cumsum([0] + [len(s.tokenized) for s in steps])
    indices = [np.arange(a, b, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    plan = packing.plan_packing(
        indices, lengths, groups, pairs, hidden_size=hidden_size, max_shapes=max_shapes, compile_cost=compile_cost
    )
    if not min_row_length:
        return plan
    dealt = [g for step in indices for g in packing.deal_into_groups(step, lengths, groups)]
    return packing.with_row_length_floor(plan, [lengths[g] for g in dealt], min_row_length)


def concat_pairs(parts: Sequence[data_lib.TokenizedPairs]) -> data_lib.TokenizedPairs:
    """Tokenized pairs one after another (a deferred suffix and the next chunk)."""
    lengths = np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    empty = np.zeros(0, np.int32)
    return data_lib.TokenizedPairs(
        flat_input_ids=np.concatenate([p.flat_input_ids[p.offsets[0] : p.offsets[-1]] for p in parts] or [empty]),
        flat_token_type_ids=np.concatenate(
            [p.flat_token_type_ids[p.offsets[0] : p.offsets[-1]] for p in parts] or [empty]
        ),
        offsets=offsets,
        lengths=lengths,
        max_length=max((p.max_length for p in parts), default=0),
    )


def slice_pairs(pairs: data_lib.TokenizedPairs, start: int, stop: int | None = None) -> data_lib.TokenizedPairs:
    """Pairs ``start:stop`` (a view of the flat arrays; offsets are absolute, as :func:`concat_pairs` expects)."""
    stop = len(pairs) if stop is None else min(stop, len(pairs))
    offsets = pairs.offsets[start : stop + 1]
    return data_lib.TokenizedPairs(
        flat_input_ids=pairs.flat_input_ids,
        flat_token_type_ids=pairs.flat_token_type_ids,
        offsets=offsets,
        lengths=pairs.lengths[start:stop],
        max_length=pairs.max_length,
    )


@dataclass
class ShardStep:
    """A process's candidate examples for one step (deferred ones first) and how many of them fit."""

    tokenized: data_lib.TokenizedPairs
    labels: np.ndarray
    fitting: int  # the first ``fitting`` examples are trained; the rest are deferred to the next step


def deferring_steps(
    chunks: Iterator[StreamStep], rows_per_step: int, fitting: Callable[[np.ndarray], int]
) -> Iterator[ShardStep]:
    """This process's steps in a multi-host run: up to ``rows_per_step`` examples in stream order, the suffix
    that does not fit the agreed shape (``fitting(lengths)`` says how many lead examples do) deferred to the
    next step. Ends when the chunks and the deferred examples are used up.

    Raises ``ValueError`` for an example that fits no step at all (longer than the agreed row length)."""
    pending: list[data_lib.TokenizedPairs] = []
    labels: list[np.ndarray] = []
    held, done, trained = 0, False, 0
    while True:
        while held < rows_per_step and not done:
            chunk = next(chunks, None)
            if chunk is None:
                done = True
            else:
                pending.append(chunk.tokenized)
                labels.append(chunk.labels)
                held += len(chunk.tokenized)
        if not held:
            return
        joined = concat_pairs(pending)
        joined_labels = np.concatenate(labels)
        step = slice_pairs(joined, 0, rows_per_step)
        n = int(fitting(step.lengths))
        if n < 1:
            raise ValueError(
                f"example {trained} of this process's shard of the stream has {int(step.lengths[0])} tokens: more "
                "than the row length every process agreed on from the first steps of the stream (multi-host "
                "packing has one shape). Lower max_length, or put a pair that long among the stream's first steps"
            )
        yield ShardStep(step, joined_labels[: len(step)], n)
        trained += n
        pending, labels, held = [slice_pairs(joined, n)], [joined_labels[n:]], held - n
