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

**Multi-host**: every process reads the whole stream and builds the same global batch, then feeds only its
own groups (:func:`crossjax.training.batch_to_global`). All processes so agree on every batch's shape
without communication; the cost is that each process reads and tokenizes the full stream.
"""

from __future__ import annotations

import copy
import itertools
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossjax import data as data_lib

__all__ = ["StreamSource", "as_stream", "StreamReader"]


def _is_iterable_dataset(obj: Any) -> bool:
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, datasets.IterableDataset)


def _is_torch_iterable_dataset(obj: Any) -> bool:
    torch_data = sys.modules.get("torch.utils.data")
    return torch_data is not None and isinstance(obj, torch_data.IterableDataset)


@dataclass
class StreamSource:
    """A stream ``fit`` reads: the object, its batch size (None: fit's default) and a short description."""

    source: Any
    batch_size: int | None
    description: str

    def open(self, skip: int) -> Iterator[Any]:
        """Iterate the stream's items (examples or rows) from item ``skip`` on."""
        if skip and _is_iterable_dataset(self.source) and hasattr(self.source, "skip"):
            return iter(self.source.skip(skip))
        return itertools.islice(iter(self.source), skip, None)


def as_stream(train_dataloader: Any) -> StreamSource | None:
    """The stream in ``train_dataloader``, or None for in-memory inputs (lists, DataLoaders, ``datasets.Dataset``).

    Streams are a ``datasets.IterableDataset``, an iterator or generator (no length), and a torch DataLoader
    over an iterable dataset (its ``batch_size`` is used; it is never iterated).
    """
    if _is_iterable_dataset(train_dataloader):
        return StreamSource(train_dataloader, None, f"datasets.IterableDataset {_columns(train_dataloader)}")
    dataset = getattr(train_dataloader, "dataset", None)
    if hasattr(train_dataloader, "sampler") and (
        _is_iterable_dataset(dataset) or _is_torch_iterable_dataset(dataset)
    ):
        return StreamSource(
            dataset, train_dataloader.batch_size, f"DataLoader over {type(dataset).__name__} {_columns(dataset)}"
        )
    if isinstance(train_dataloader, Iterator):
        return StreamSource(train_dataloader, None, f"iterator {type(train_dataloader).__name__}")
    return None


def _columns(ds: Any) -> list[str] | None:
    columns = getattr(ds, "column_names", None)
    return list(columns) if isinstance(columns, (list, tuple)) else None


class _RowReader:
    """Turns rows (dicts of a ``datasets.IterableDataset``) into examples, columns found on the first row as
    :func:`crossjax.data.collect_examples` finds them for a ``datasets.Dataset``."""

    def __init__(self) -> None:
        self.pair: tuple[str, str] | None = None
        self.label: str | None = None

    def __call__(self, row: Any) -> Any:
        if not isinstance(row, dict):
            return row
        if self.pair is None:
            columns = list(row)
            self.label = next((c for c in data_lib._LABEL_COLUMNS if c in columns), None)
            pair = next((p for p in data_lib._PAIR_COLUMNS if p[0] in columns and p[1] in columns), None)
            if pair is None:
                strings = [c for c in columns if c != self.label and isinstance(row[c], str)]
                if len(strings) < 2:
                    raise ValueError(
                        f"could not find two text columns in the stream (columns {columns}); name them e.g. "
                        "'sentence1'/'sentence2' or make the first two string columns the pair"
                    )
                pair = (strings[0], strings[1])
            self.pair = pair
        label = row.get(self.label) if self.label is not None else None
        return data_lib.InputExample(texts=[row.get(self.pair[0]), row.get(self.pair[1])], label=label)


def _flatten(items: Iterable[Any]) -> Iterator[Any]:
    """Examples one by one: rows become examples, batches (lists of examples) are flattened."""
    to_example = _RowReader()
    for item in items:
        if isinstance(item, (list, tuple)) and not hasattr(item, "texts"):
            yield from (to_example(x) for x in item)
        else:
            yield to_example(item)


@dataclass
class StreamStep:
    """One step's examples, tokenized: ``tokenized`` holds them in order, ``labels`` likewise."""

    tokenized: data_lib.TokenizedPairs
    labels: np.ndarray
    end: int  # examples handed over once this step is trained (the data position)


class StreamReader:
    """The background reader: ``next_step()`` returns the next :class:`StreamStep`, or None at the end.

    ``start`` examples (already trained on, from a checkpoint) are skipped. With ``shuffle_buffer_size``,
    the block holding ``start`` is rebuilt and its first examples dropped, so the order is the same as
    without the interruption.
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
        seed: int = 0,
        prefetch: int = 4,
    ) -> None:
        self.source = source
        self.tokenizer = copy.deepcopy(tokenizer)  # the main thread's evaluators may tokenize meanwhile
        self.max_length = max_length
        self.num_labels = num_labels
        self.step_size = step_size
        self.max_steps = max_steps
        self.start = start
        self.block = int(shuffle_buffer_size)
        self.seed = seed
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="crossjax-stream", daemon=True)
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

    def _ordered(self) -> Iterator[tuple[int, Any]]:
        """(number in the stream, example) in training order, from the data position ``start`` on."""
        if self.block <= 0:
            yield from enumerate(_flatten(self.source.open(self.start)), start=self.start)
            return
        block_index = self.start // self.block
        first = block_index * self.block
        items = enumerate(_flatten(self.source.open(first)), start=first)
        drop = self.start - first
        while True:
            chunk = list(itertools.islice(items, self.block))
            if not chunk:
                return
            order = np.random.default_rng((int(self.seed), block_index)).permutation(len(chunk))
            for position in order[drop:]:
                yield chunk[int(position)]
            drop = 0
            block_index += 1

    def _run(self) -> None:
        try:
            position = self.start
            ordered = self._ordered()
            for _ in range(self.max_steps):
                chunk = list(itertools.islice(ordered, self.step_size))
                if not chunk:
                    break
                texts_a, texts_b, parts = [], [], []
                for number, example in chunk:
                    a, b, label = data_lib.validate_examples([example], self.num_labels, start=number)
                    texts_a += a
                    texts_b += b
                    parts.append(label)
                labels = np.concatenate(parts)
                tokenized = data_lib.tokenize_pairs(self.tokenizer, texts_a, texts_b, self.max_length)
                position += len(chunk)
                if not self._put(StreamStep(tokenized, labels, position)):
                    return
                if len(chunk) < self.step_size:
                    break
            self._put(None)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread, before the step
            self._put(e)

    # -- the main thread
    def next_step(self) -> StreamStep | None:
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

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def plan_from_steps(steps: list[StreamStep], groups: int, pairs: int, hidden_size: int, max_shapes: int):
    """The packing plan of a run planned from its first steps (the lookahead)."""
    from crossjax import packing

    lengths = np.concatenate([s.tokenized.lengths for s in steps]) if steps else np.zeros(0, np.int32)
    bounds = np.cumsum([0] + [len(s.tokenized) for s in steps])
    indices = [np.arange(a, b, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return packing.plan_packing(indices, lengths, groups, pairs, hidden_size=hidden_size, max_shapes=max_shapes)
