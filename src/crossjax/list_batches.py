"""List batches: the (query, documents) structure of a ranking loss laid over packed pairs.

A loss's host-side ``layout`` (see :mod:`crossjax.losses.base`) turns a step's dataset rows into the pairs to
score and a ``[Q, D]`` index that gathers their logits into one row of documents per query. Here those pairs
are tokenized and packed so that every query keeps all its pairs in one group (one data shard and
micro-batch): the gather then never crosses devices, and gradient accumulation (or caching, for
``mini_batch_size``) splits a step by whole queries, which keeps every per-query loss exact.

The static shapes of a run: ``Q`` queries per group (the step's rows / groups), ``D`` documents per query and
``K`` label columns (the widest over the dataset, from the loss's ``width``), and the packer's ``[G, R, T]``
rows (:mod:`crossjax.packing`, ``P = Q * D`` pair slots a group).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossjax import data as data_lib
from crossjax import packing
from crossjax.fit_loop import ShardedStream, TrainStep
from crossjax.parallel import process_rows

logger = logging.getLogger(__name__)

__all__ = [
    "ListStep",
    "ListData",
    "StreamListData",
    "tokenize_layout",
    "deal_queries",
    "group_token_lengths",
    "pack_list_step",
]


@dataclass
class ListStep:
    """One step's pairs, tokenized, and how they gather into queries."""

    tokenized: data_lib.TokenizedPairs
    index: np.ndarray  # int64 [Q', D']: pair of doc d of query q, -1 none (Q' = the step's rows)
    labels: np.ndarray  # [Q', K']
    micro_batches: int = 1  # the per-device batches laid out (gradient accumulation; Hugging Face's substeps)

    @property
    def queries(self) -> int:
        return int(self.index.shape[0])

    def query_pairs(self, q: int) -> np.ndarray:
        row = self.index[q]
        return row[row >= 0]


def tokenize_layout(
    layouts: Sequence[Any], tokenizer: Any, max_length: int, limits: tuple[int, int | None] | None = None
) -> ListStep:
    """Tokenize the pairs of one step's layouts (one per micro-batch: in-batch negatives come from the
    micro-batch, as in a PyTorch run with gradient accumulation) with ``truncation="longest_first"``, as
    ``CrossEncoder`` does; their queries are stacked, each layout's indices shifted past the earlier pairs."""
    pairs: list[tuple[str, str]] = []
    indices, labels = [], []
    width = max(np.asarray(layout.index).reshape(len(layout.index), -1).shape[1] for layout in layouts)
    label_width = max(_as_2d(layout.labels).shape[1] for layout in layouts)
    for layout in layouts:
        index = np.asarray(layout.index, dtype=np.int64).reshape(len(layout.index), -1)
        shifted = np.full((index.shape[0], width), -1, dtype=np.int64)
        shifted[:, : index.shape[1]] = np.where(index >= 0, index + len(pairs), -1)
        indices.append(shifted)
        own = _as_2d(layout.labels)
        padded = np.zeros((own.shape[0], label_width), dtype=own.dtype)
        padded[:, : own.shape[1]] = own
        labels.append(padded)
        pairs.extend(layout.pairs)
    tokenized = data_lib.tokenize_pairs(
        tokenizer, [a for a, _ in pairs], [b for _, b in pairs], max_length, limits=limits
    )
    return ListStep(tokenized, np.concatenate(indices), np.concatenate(labels), len(layouts))


def lay_out_step(
    target: Any, loss: Any, batches: Sequence[tuple[list[list[Any]], Any]], rng: np.random.Generator, tokenizer: Any
) -> ListStep:
    """One step's micro-batches (``(columns, labels)`` each) laid out by ``loss`` (in-batch negatives drawn from
    ``rng``, one generator for the step) and tokenized for ``target``'s model."""
    layouts = [loss.layout(columns, labels, rng) for columns, labels in batches]
    limits = data_lib.token_limits(target.model.config)
    return tokenize_layout(layouts, tokenizer, target.max_length, limits)


def _as_2d(labels: Any) -> np.ndarray:
    labels = np.asarray(labels)
    labels = labels.astype(np.int32 if np.issubdtype(labels.dtype, np.integer) else np.float32)
    return labels[:, None] if labels.ndim == 1 else labels


def deal_queries(step: ListStep, groups: int) -> list[np.ndarray]:
    """The queries of each group: balanced token counts, at most ``ceil(Q' / groups)`` a group."""
    totals = np.array([int(step.tokenized.lengths[step.query_pairs(q)].sum()) for q in range(step.queries)])
    return packing.deal_into_groups(np.arange(step.queries, dtype=np.int64), totals, groups)


def group_token_lengths(step: ListStep, dealt: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Token counts of each group's pairs (what the packing plan is made from)."""
    lengths = step.tokenized.lengths
    return [lengths[np.concatenate([step.query_pairs(q) for q in g])] if len(g) else lengths[:0] for g in dealt]


def pack_list_step(
    step: ListStep,
    plan: packing.PackingPlan,
    queries_per_group: int,
    docs: int,
    label_width: int,
    pad_token_id: int,
) -> packing.PackedBatch:
    """Pack a step's pairs by :func:`deal_queries` and add the ``[G, Q, D]`` gather, labels and query mask."""
    g_ = plan.groups
    if step.index.shape[1] > docs or step.labels.shape[1] > label_width:
        raise ValueError(
            f"a step needs {step.index.shape[1]} documents and {step.labels.shape[1]} label columns per query, "
            f"more than the run's {docs} and {label_width}"
        )
    dealt = deal_queries(step, g_)
    if any(len(g) > queries_per_group for g in dealt):
        raise ValueError(f"{step.queries} queries do not fit {g_} groups of {queries_per_group}")
    pair_groups = [
        np.concatenate([step.query_pairs(q) for q in g]) if len(g) else np.zeros(0, np.int64) for g in dealt
    ]
    every_pair = np.concatenate(pair_groups) if pair_groups else np.zeros(0, np.int64)
    batch = packing.pack(step.tokenized, every_pair, None, plan, pad_token_id, dealt=pair_groups)
    list_index = np.full((g_, queries_per_group, docs), -1, dtype=np.int32)
    list_labels = np.zeros((g_, queries_per_group, label_width), dtype=step.labels.dtype)
    query_mask = np.zeros((g_, queries_per_group), dtype=bool)
    for g, queries in enumerate(dealt):
        slot_of_pair = {int(pair): slot for slot, pair in enumerate(batch.indices[g]) if pair >= 0}
        for j, q in enumerate(queries):
            row = step.index[q]
            for d, pair in enumerate(row):
                if pair >= 0:
                    list_index[g, j, d] = slot_of_pair[int(pair)]
            list_labels[g, j, : step.labels.shape[1]] = step.labels[q]
            query_mask[g, j] = True
    batch.list_index, batch.list_labels, batch.query_mask = list_index, list_labels, query_mask
    return batch


# ----------------------------------------------------------------------------------------- the run's data
def no_duplicates_batches(columns: Sequence[Sequence[Any]], order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """sentence-transformers' NO_DUPLICATES sampler: walk ``order``, and put each row into the first batch
    being filled that holds none of its texts yet; rows that clash wait for a later batch (the last batches
    may be smaller)."""
    remaining = [int(i) for i in order]
    texts_of: dict[int, set[str]] = {}
    batches: list[np.ndarray] = []
    while remaining:
        batch: list[int] = []
        seen: set[str] = set()
        left: list[int] = []
        for position, row in enumerate(remaining):
            if len(batch) == batch_size:  # full: the rest waits, unscanned (a scan per batch, not per row)
                left.extend(remaining[position:])
                break
            texts = texts_of.get(row)
            if texts is None:
                texts = texts_of[row] = set(_row_texts(columns, row))
            if texts & seen:
                left.append(row)
            else:
                batch.append(row)
                seen |= texts
        batches.append(np.asarray(batch, dtype=np.int64))
        remaining = left
    return batches


def _row_texts(columns: Sequence[Sequence[Any]], row: int) -> list[str]:
    """A row's values as sentence-transformers compares them: each column's value as one string, a list of texts
    as a whole (a document shared by many rows' lists is no clash)."""
    return [str(column[row]) for column in columns]


def group_by_label_batches(
    labels: Sequence[Any], batch_size: int, rng: np.random.Generator, drop_last: bool
) -> list[np.ndarray]:
    """sentence-transformers' GROUP_BY_LABEL sampler: rows shuffled within each label (trimmed to an even count),
    then labels take turns giving 2 rows each, in a fresh random order every round, until fewer than 2 labels
    remain; the stream is cut into batches of ``batch_size`` (a last one of >= 4 rows is kept unless
    ``drop_last``). Every batch holds several labels with >= 2 rows each."""
    if batch_size < 4 or batch_size % 2:
        raise ValueError(f"batch_sampler=GROUP_BY_LABEL needs an even batch size >= 4, got {batch_size}")
    by_label: dict[Any, list[int]] = {}
    for row, label in enumerate(labels):
        if np.ndim(label) != 0:
            raise ValueError(f"batch_sampler=GROUP_BY_LABEL groups rows by one label each; row {row} has {label!r}")
        by_label.setdefault(np.asarray(label).item(), []).append(row)
    queues = {label: rows for label, rows in by_label.items() if len(rows) >= 2}
    if len(queues) < 2:
        raise ValueError(
            "batch_sampler=GROUP_BY_LABEL needs at least 2 distinct labels with >= 2 rows each, "
            f"but only {len(queues)} label(s) qualified"
        )
    for label, rows in queues.items():
        perm = rng.permutation(len(rows))[: len(rows) // 2 * 2]
        queues[label] = [rows[i] for i in perm]
    remaining, stream, last = list(queues), [], None
    while len(remaining) >= 2:
        remaining = [remaining[i] for i in rng.permutation(len(remaining))]
        if stream and remaining[0] == last:
            remaining[0], remaining[1] = remaining[1], remaining[0]
        for label in remaining:
            stream.extend(queues[label][:2])
            queues[label] = queues[label][2:]
        last = remaining[-1]
        remaining = [label for label in remaining if queues[label]]
    batches = [np.asarray(stream[i : i + batch_size], dtype=np.int64) for i in range(0, len(stream), batch_size)]
    if batches and len(batches[-1]) < batch_size and (drop_last or len(batches[-1]) < 4):
        batches.pop()
    return batches


def step_geometry(plan: Any, loss: Any, batch_size: int, k: int, docs: int) -> tuple[int, int, int]:
    """(chunks, groups, queries per group) of a step of ``batch_size`` rows x ``k`` micro-batches: a loss's
    ``mini_batch_size`` (pairs per forward pass) splits each micro-batch into chunks of whole queries."""
    queries_per_micro = math.ceil(batch_size / plan.data_shards)
    mini = getattr(loss, "mini_batch_size", None)
    pairs_per_micro = queries_per_micro * docs
    chunks = 1
    if mini is not None and mini > 0 and pairs_per_micro > mini:
        chunks = min(queries_per_micro, math.ceil(pairs_per_micro / max(int(mini), docs)))
    groups = plan.data_shards * k * chunks
    return chunks, groups, math.ceil(batch_size * k / groups)


def plan_list_packing(data: Any, sample: Sequence[ListStep], min_row_length: int = 0) -> packing.PackingPlan:
    """The packed shapes of ``data``'s run (a :class:`ListData` or :class:`StreamListData`), planned on the laid
    steps ``sample`` (the compile is weighed against the share of the run's steps they are). With
    ``min_row_length`` (a multi-host stream's): one shape, of rows at least that long."""
    group_lengths = [group_token_lengths(laid, deal_queries(laid, data.groups)) for laid in sample]
    config = data.target.model.config
    plan = packing.plan_call(
        group_lengths,
        data.groups,
        data.queries_per_group * data.docs,
        hidden_size=packing.model_width(config),
        max_shapes=1 if min_row_length else data.target.max_shapes,
        # a step runs its k x chunks groups one after another
        compile_cost=packing.train_compile_cost(config, data.k * data.chunks, len(sample) / data.total_steps),
    )
    if not min_row_length:
        return plan
    return packing.with_row_length_floor(plan, [g for step in group_lengths for g in step], min_row_length)


class _EpochPlan:
    """Where a run's steps fall in its plan of epochs: step ``g`` trains plan position ``g``, until a callback ends
    an epoch early (Hugging Face's ``control.should_epoch_stop``); the positions left in that epoch are then
    skipped, and the next step trains the next epoch's first. The skips are checkpointed, so a resume continues
    where the run did. A run ends at ``total_steps`` steps or when its epochs' positions run out (as Hugging
    Face's ends at ``max_steps`` or after its last epoch)."""

    steps_per_epoch: int
    total_steps: int
    epochs: int
    skips: tuple[tuple[int, int], ...] = ()  # (steps done when the epoch was ended, positions skipped)

    def position(self, done: int, inclusive: bool = True) -> int:
        """Plan positions consumed once ``done`` steps are trained (``inclusive``: with a skip asked for then)."""
        return done + sum(count for at, count in self.skips if at < done or (inclusive and at == done))

    def end_epoch(self, done: int) -> None:
        """Skip the rest of the current epoch: the step after ``done`` trains the next epoch's first position."""
        rest = -self.position(done) % self.steps_per_epoch
        if rest:
            self.skips = (*self.skips, (done, rest))

    def _positions(self) -> Any:
        """(global step, plan position) of each step left to train."""
        done = self.start_step
        while done < self.total_steps and (position := self.position(done)) < self.epochs * self.steps_per_epoch:
            yield done, position
            done += 1

    def resume(self, meta: dict[str, Any]) -> None:
        """The skips of the checkpointed run (the global step says the rest)."""
        self.skips = tuple((int(at), int(count)) for at, count in meta.get("epoch_skips", []))

    def start(self, start_step: int) -> None:
        self.start_step = start_step

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"epoch_skips": [list(skip) for skip in self.skips]} if self.skips else {}


class _OneLossSteps(_EpochPlan):
    """What the steps of one dataset (one loss) share: packing a laid step into the run's shapes."""

    loss: Any
    target: Any
    packing_plan: packing.PackingPlan
    docs: int
    label_width: int
    chunks: int
    queries_per_group: int

    def pack(self, laid: ListStep) -> packing.PackedBatch:
        return pack_list_step(
            laid, self.packing_plan, self.queries_per_group, self.docs, self.label_width, self.target.pad_id
        )

    def train_step(self, epoch: int, steps_in_epoch: int, last: bool, laid: ListStep, **fields: Any) -> Any:
        """The :class:`~crossjax.fit_loop.TrainStep` of a laid step, packed."""
        batch, pairs = self.pack(laid), len(laid.tokenized)
        return TrainStep(epoch, steps_in_epoch, last, batch, pairs, micro_batches=laid.micro_batches, **fields)

    @property
    def step_losses(self) -> list[tuple[Any, int]]:
        """The (loss, chunks) of each source of steps (one here)."""
        return [(self.loss, self.chunks)]

    def summary(self) -> dict[str, Any]:
        return {"steps_per_epoch": self.steps_per_epoch, "docs_per_query": self.docs, "loss_chunks": self.chunks}


class ListData(_OneLossSteps):
    """The trainer's data source for :func:`crossjax.fit_loop.run_fit`: dataset rows -> loss layout -> packed
    list batches. Batches are drawn like Hugging Face Trainer's (seeded per epoch, ``per_device`` batches of
    rows, ``gradient_accumulation_steps`` of them an optimizer step); a step's layout uses a numpy generator
    seeded by ``(seed, global step)`` (in-batch negatives), so a resumed run sees exactly the same batches.
    """

    PLAN_SAMPLE_STEPS = 64  # steps laid out up front to plan the packed shapes (a longer one adds a shape)

    def __init__(
        self,
        target: Any,
        columns: list[list[Any]],
        labels: Any,
        loss: Any,
        *,
        batch_size: int,
        accumulation_steps: int,
        epochs: float,
        max_steps: int | None,
        seed: int,
        drop_last: bool,
        sampler: str = "batch_sampler",
        name: str = "train_dataset",
    ) -> None:
        self.target, self.columns, self.loss, self.name = target, columns, loss, name
        self.labels = None if labels is None else list(labels)
        self.rows = len(columns[0]) if columns else 0
        if self.rows == 0:
            raise ValueError(f"{name} is empty")
        loss.validate(columns, self.labels, 0)
        self.batch_size, self.k, self.seed = int(batch_size), int(accumulation_steps), int(seed)
        self.docs, self.label_width = (int(v) for v in loss.width(columns, self.labels, self.batch_size))
        self.sampler, self.drop_last = sampler, bool(drop_last)
        plan = target.plan
        plan.check_batch_size(self.batch_size)
        self._epoch_cache: dict[int, list[list[np.ndarray]]] = {}
        self._data_fingerprint: str | None = None
        self._stream: list[np.ndarray] = []  # NO_DUPLICATES: the batches of passes 0, 1, ... end to end
        self._stream_passes = 0
        if sampler == "no_duplicates":  # sentence-transformers' advertised length: the rows / batch size
            batches = self.rows // self.batch_size if self.drop_last else math.ceil(self.rows / self.batch_size)
            self.steps_per_epoch = math.ceil(batches / self.k)
        else:
            self.steps_per_epoch = len(self._epoch_steps(0))
            batches = sum(len(step) for step in self._epoch_steps(0))
        self.batches_per_epoch = batches  # Hugging Face's epoch fraction counts batches, not optimizer steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{name}: no full batch of {self.batch_size} rows with dataloader_drop_last=True: {self.rows} rows only"
            )
        if max_steps is not None and max_steps > 0:
            self.total_steps = int(max_steps)
        else:
            self.total_steps = max(1, math.ceil(float(epochs) * self.steps_per_epoch))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.chunks, self.groups, self.queries_per_group = step_geometry(plan, loss, self.batch_size, self.k, self.docs)
        sampled = min(self.PLAN_SAMPLE_STEPS, self.total_steps)
        sample = np.unique(np.linspace(0, self.total_steps - 1, sampled).astype(int))
        self.packing_plan = plan_list_packing(self, [self._list_step(int(step)) for step in sample])
        self.fingerprint = {
            "rows": self.rows,
            "batch_size": self.batch_size,
            "sampler": sampler,
            "drop_last": self.drop_last,
            "data_seed": self.seed,
            "steps_per_epoch": self.steps_per_epoch,
            "docs": self.docs,
            "packed_shapes": [list(shape) for shape in self.packing_plan.shapes],
        }

    # -------------------------------------------------------------------------------------- batches
    def _epoch_steps(self, epoch: int) -> list[list[np.ndarray]]:
        """The rows of each optimizer step of an epoch (k per-device batches each, as HF Trainer groups them)."""
        if epoch in self._epoch_cache:
            return self._epoch_cache[epoch]
        if self.sampler == "no_duplicates":  # shuffled and cut by its passes (drop_last applied there)
            per_epoch = self.steps_per_epoch * self.k
            batches = self._no_duplicates_stream(epoch * per_epoch, (epoch + 1) * per_epoch)
        else:
            rng = np.random.default_rng((self.seed, epoch))
            if self.sampler == "sequential":  # evaluation: the dataset's order
                order = np.arange(self.rows, dtype=np.int64)
            else:
                order = rng.permutation(self.rows).astype(np.int64)
            if self.sampler == "group_by_label":
                if self.labels is None:
                    raise ValueError(
                        f"batch_sampler=GROUP_BY_LABEL needs a label column ('label', 'labels', 'score' or "
                        f"'scores'); {self.name} has none"
                    )
                batches = group_by_label_batches(self.labels, self.batch_size, rng, self.drop_last)
            else:
                batches = [order[i : i + self.batch_size] for i in range(0, self.rows, self.batch_size)]
            if self.drop_last:
                batches = [b for b in batches if len(b) == self.batch_size]
        steps = [batches[i : i + self.k] for i in range(0, len(batches), self.k)]
        expected = getattr(self, "steps_per_epoch", len(steps))
        if len(steps) != expected:  # GROUP_BY_LABEL can make an epoch shorter or longer: keep epochs equal
            steps = (steps * math.ceil(expected / max(len(steps), 1)))[:expected]
        self._epoch_cache = {epoch: steps}  # one epoch at a time
        return steps

    def _no_duplicates_stream(self, start: int, stop: int) -> list[np.ndarray]:
        """Batches ``start:stop`` of NO_DUPLICATES passes laid end to end, each pass a fresh shuffle (seeded
        ``(seed, pass)``). A pass's batch count depends on which texts clash, so epochs (of sentence-transformers'
        advertised length) are cut from this stream: every row is trained once a pass, none twice or dropped,
        where cutting each pass to the epoch's length would repeat or drop batches."""
        while len(self._stream) < stop:
            order = np.random.default_rng((self.seed, self._stream_passes)).permutation(self.rows).astype(np.int64)
            self._stream_passes += 1
            batches = no_duplicates_batches(self.columns, order, self.batch_size)
            if self.drop_last:
                batches = [b for b in batches if len(b) == self.batch_size]
            if not batches:
                raise ValueError(
                    f"batch_sampler=NO_DUPLICATES with dataloader_drop_last=True: no batch of {self.batch_size} "
                    "rows without a repeated text can be formed; lower the batch size"
                )
            self._stream.extend(batches)
        return self._stream[start:stop]

    def _list_step(self, position: int) -> ListStep:
        epoch, index = divmod(position, self.steps_per_epoch)
        return self.laid_step(epoch, index, (self.seed, 1, position))

    def laid_step(self, epoch: int, index: int, rng_key: tuple[int, ...]) -> ListStep:
        """Step ``index`` of ``epoch``: its (up to k) per-device batches laid out by the loss and tokenized;
        ``rng_key`` seeds the layout's generator (in-batch negatives)."""
        labels = self.labels
        batches = [
            ([[c[i] for i in rows] for c in self.columns], None if labels is None else [labels[i] for i in rows])
            for rows in self._epoch_steps(epoch)[index]
        ]
        return lay_out_step(self.target, self.loss, batches, np.random.default_rng(rng_key), self.target.tokenizer)

    # -------------------------------------------------------------------------- the run_fit interface
    def run_fingerprint(self) -> dict[str, Any]:
        return {**self.fingerprint, "data": self.data_fingerprint()}

    def data_fingerprint(self) -> str:
        """A short hash of every row's values and label, so that a resume on other data (swapped columns,
        other labels, other texts of the same lengths) is refused, as the legacy ``fit`` refuses it."""
        if self._data_fingerprint is None:  # hashed once (a resume and the processes' agreement both ask)
            from crossjax.checkpoint import values_fingerprint

            self._data_fingerprint = values_fingerprint([*self.columns, self.labels if self.labels is not None else []])
        return self._data_fingerprint

    def steps(self) -> Any:
        for global_step, position in self._positions():
            epoch, index = divmod(position, self.steps_per_epoch)
            laid = self._list_step(position)
            last = index + 1 == self.steps_per_epoch or global_step + 1 == self.total_steps
            yield self.train_step(epoch, index + 1, last, laid)

    def describe(self) -> tuple[int | None, list[tuple[list[Any], Any]]]:
        """The number of rows and the first three (inputs, label), for logs and the model card."""
        samples = [
            ([column[i] for column in self.columns], None if self.labels is None else self.labels[i])
            for i in range(min(3, self.rows))
        ]
        return self.rows, samples

    def close(self) -> None:
        pass


class MultiListData(_EpochPlan):
    """Several training datasets, each with its own loss (and packed shapes): every step is one batch of one
    dataset, as sentence-transformers' multi-dataset samplers do. ``proportional``: every batch of every
    dataset once per epoch, in a seeded random order; ``round_robin``: one batch of each in turn until the
    smallest is exhausted."""

    def __init__(
        self, sources: list[ListData], names: list[str], sampler: str, seed: int, epochs: float, max_steps: int | None
    ) -> None:
        self.sources, self.names, self.sampler, self.seed = sources, names, sampler, int(seed)
        self.target, self.loss = sources[0].target, sources[0].loss  # the run's first loss (its fingerprint)
        self.batch_size, self.k = sources[0].batch_size, sources[0].k
        self.rows = sum(source.rows for source in sources)  # as Hugging Face counts a concatenated dataset
        self.steps_per_epoch = len(self._order(0))
        if max_steps is not None and max_steps > 0:
            self.total_steps = int(max_steps)
        else:
            self.total_steps = max(1, math.ceil(float(epochs) * self.steps_per_epoch))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    def _order(self, epoch: int) -> list[tuple[int, int]]:
        """(dataset, step of its epoch) for each step of an epoch."""
        if self.sampler == "round_robin":
            shortest = min(source.steps_per_epoch for source in self.sources)
            return [(s, i) for i in range(shortest) for s in range(len(self.sources))]
        every = [(s, i) for s, source in enumerate(self.sources) for i in range(source.steps_per_epoch)]
        permutation = np.random.default_rng((self.seed, 2, epoch)).permutation(len(every))
        return [every[j] for j in permutation]

    @property
    def step_losses(self) -> list[tuple[Any, int]]:
        return [(source.loss, source.chunks) for source in self.sources]

    def run_fingerprint(self) -> dict[str, Any]:
        return {
            "datasets": {name: s.fingerprint for name, s in zip(self.names, self.sources, strict=True)},
            "data": {name: s.data_fingerprint() for name, s in zip(self.names, self.sources, strict=True)},
            "losses": [f"{type(s.loss).__qualname__}({s.loss.get_config_dict()})" for s in self.sources],
            "sampler": self.sampler,
        }

    def describe(self) -> tuple[int | None, list[tuple[list[Any], Any]]]:
        described = [source.describe() for source in self.sources]
        return sum(rows for rows, _ in described), described[0][1]

    def steps(self) -> Any:
        order, order_epoch = None, -1
        for global_step, position in self._positions():
            epoch, index = divmod(position, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self._order(epoch), epoch
            s, i = order[index]
            source = self.sources[s]
            laid = source.laid_step(epoch, i, (self.seed, 1, s, position))
            last = index + 1 == self.steps_per_epoch or global_step + 1 == self.total_steps
            yield source.train_step(epoch, index + 1, last, laid, source=s)

    def summary(self) -> dict[str, Any]:
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "datasets": {n: s.summary() for n, s in zip(self.names, self.sources, strict=True)},
        }

    def close(self) -> None:
        pass


class StreamListData(_OneLossSteps, ShardedStream):
    """The trainer's data from a stream (a ``datasets.IterableDataset``): its rows in the stream's order (no
    sampler; shuffle the stream itself, e.g. ``IterableDataset.shuffle(buffer_size=...)``), one pass at most,
    for ``max_steps`` steps. Each step's ``batch_size x accumulation_steps`` rows are laid out by the loss and
    tokenized in a background thread, a few steps ahead, so memory does not grow with the stream.

    The documents per query and the packed shapes are planned from the first :data:`ListData.PLAN_SAMPLE_STEPS`
    steps (a later step that needs longer rows, or more documents per query, gets one more shape). The data
    position (rows read) and that plan go into every checkpoint: a resume skips the rows trained on and
    continues as the uninterrupted run would.

    **Multi-host** (``P > 1`` processes): process ``p`` reads only its own shard of the stream
    (``datasets.distributed.split_dataset_by_node``: whole files per process where the stream's shards divide
    by ``P``, else every ``P``-th row) and lays out only its own rows, ``batch_size / P`` a micro-batch (so
    in-batch negatives come from the process's rows, as in a PyTorch DDP run, whose negatives come from each
    device's batch). The shapes are agreed without communication, as ``fit``'s streams do (see
    :mod:`crossjax.streaming`): every process plans (D, K) and one packed shape, of rows at least
    ``max_length`` long, from the first steps of the whole stream; a step takes the longest prefix of the
    process's rows that fits its groups and defers the rest to its next step. A row whose list is wider than
    planned, or too long for a group, stops every process with an error naming it (a single process would
    widen the run's shapes instead). A process whose shard is used up feeds empty steps; the run ends when all
    are (see :class:`crossjax.fit_loop.ShardedStream`). Each checkpoint holds every process's data position."""

    def __init__(
        self,
        target: Any,
        source: Any,
        to_columns: Any,
        loss: Any,
        *,
        batch_size: int,
        accumulation_steps: int,
        max_steps: int,
        seed: int,
        drop_last: bool,
        name: str = "train_dataset",
    ) -> None:
        import jax

        self.target, self.source, self.to_columns, self.loss, self.name = target, source, to_columns, loss, name
        self.batch_size, self.k, self.seed = int(batch_size), int(accumulation_steps), int(seed)
        self.drop_last = bool(drop_last)
        target.plan.check_batch_size(self.batch_size)
        self.total_steps = self.steps_per_epoch = int(max_steps)  # one pass: a single epoch of max_steps
        self.epochs, self.batches_per_epoch = 1, self.total_steps * self.k
        self.rows = None  # unknown
        self.rows_read = 0  # rows of the stream (this process's shard) read for the steps trained so far
        self.processes, self.process = jax.process_count(), jax.process_index()
        self.position_unit, self.failure = "rows", None
        self.packing_plan: packing.PackingPlan | None = None
        self.label_dtype = np.dtype(np.float32)  # a multi-host step's labels (its empty steps' too)
        self.reader: Any = None
        self.first_rows: list[dict[str, Any]] = []  # the first rows as the stream gave them (logs, model card)
        self.dropped = 0  # rows of a last partial batch that drop_last dropped

    # ------------------------------------------------------------------------------ the background thread
    def _lay_out(self, rows: list[tuple[int, Any]], micro_rows: int, key: tuple[int, ...], tokenizer: Any) -> Any:
        """(laid step, its (D, K)) of ``rows`` (``(row number, row)``), ``micro_rows`` a micro-batch."""
        columns_of, widths = [], (0, 0)
        for i in range(0, len(rows), micro_rows):
            batch = rows[i : i + micro_rows]
            first_row = batch[0][0]
            columns, labels = self.to_columns([row for _, row in batch], first_row)
            self.loss.validate(columns, labels, first_row)
            if not self.first_rows:
                self.first_rows = [dict(row) for _, row in batch[:3]]
            width = self.loss.width(columns, labels, micro_rows)
            widths = (max(widths[0], int(width[0])), max(widths[1], int(width[1])))
            columns_of.append((columns, labels))
        rng = np.random.default_rng(key)  # ListData's key: the same layout of the same rows
        return lay_out_step(self.target, self.loss, columns_of, rng, tokenizer), widths

    def _laid_steps(self, first_step: int, start: int, tokenizer: Any) -> Any:
        """(laid step, rows read once it is trained, its (D, K)) for the steps from ``first_step`` on, reading
        the stream from row ``start``."""
        rows = enumerate(self.source.open(start), start=start)
        step_rows = self.batch_size * self.k
        for step in range(first_step, self.total_steps):
            chunk = list(itertools.islice(rows, step_rows))
            end = chunk[-1][0] + 1 if chunk else start
            if self.drop_last and len(chunk) % self.batch_size:
                self.dropped = len(chunk) % self.batch_size
                chunk = chunk[: len(chunk) - self.dropped]
            if not chunk:
                return
            laid, widths = self._lay_out(chunk, self.batch_size, (self.seed, 1, step), tokenizer)
            yield laid, end, widths
            if len(chunk) < step_rows:
                return

    def _shard_laid_steps(self, first_step: int, start: int, tokenizer: Any) -> Any:
        """Multi-host: (laid step, shard rows read once it is trained) of this process's shard from row
        ``start``: each step up to its share of rows in order, the longest prefix that fits this process's groups;
        the rest waits for the next step."""
        rows = enumerate(self.source.sharded(self.process, self.processes).open(start), start=start)
        micro_rows = self.batch_size // self.processes
        share = micro_rows * self.k
        pending: list[tuple[int, Any]] = []
        for step in range(first_step, self.total_steps):
            pending.extend(itertools.islice(rows, share - len(pending)))
            if self.drop_last and len(pending) < share and len(pending) % micro_rows:
                self.dropped = len(pending) % micro_rows  # the shard's last partial batch
                pending = pending[: len(pending) - self.dropped]
            if not pending:
                return
            taken, laid = self._fitting_rows(pending, micro_rows, step, tokenizer)
            yield laid, pending[taken - 1][0] + 1
            pending = pending[taken:]

    def _fitting_rows(self, rows: list[tuple[int, Any]], micro_rows: int, step: int, tokenizer: Any) -> Any:
        """(n, laid step) of the longest prefix of ``rows`` whose layout fits this process's groups of the planned
        shape (found by bisection; each try lays the prefix out anew, as its in-batch negatives differ)."""
        key = (self.seed, 1, step, self.process)

        def lay(n: int) -> ListStep | None:
            laid, _ = self._lay_out(rows[:n], micro_rows, key, tokenizer)
            return laid if self._fits(laid) else None

        if (laid := lay(len(rows))) is not None:
            return len(rows), laid
        good, bad, best = 0, len(rows), None
        while bad - good > 1:  # lay(good) fits (or good = 0), lay(bad) does not
            middle = (good + bad) // 2
            if (tried := lay(middle)) is not None:
                good, best = middle, tried
            else:
                bad = middle
        if best is None:
            raise ValueError(self._unfit_row(rows[0], micro_rows, key, tokenizer))
        return good, best

    def _fits(self, laid: ListStep) -> bool:
        plan = self.local_plan
        if laid.index.shape[1] > self.docs or laid.labels.shape[1] > self.label_width:
            return False
        dealt = deal_queries(laid, plan.groups)
        if any(len(g) > self.queries_per_group for g in dealt):
            return False
        length = plan.row_lengths[-1]
        return all(packing.fits_rows(lengths, plan.rows, length) for lengths in group_token_lengths(laid, dealt))

    def _unfit_row(self, row: tuple[int, Any], micro_rows: int, key: tuple[int, ...], tokenizer: Any) -> str:
        laid, _ = self._lay_out([row], micro_rows, key, tokenizer)
        where = f"{self.name}: row {row[0]} of process {self.process}'s shard of the stream"
        plan = self.local_plan
        if laid.index.shape[1] > self.docs or laid.labels.shape[1] > self.label_width:
            return (
                f"{where} needs {laid.index.shape[1]} documents and {laid.labels.shape[1]} label columns per query; "
                f"every process planned {self.docs} and {self.label_width} from the stream's first steps (a "
                "multi-host run has one shape, agreed without communication). Put a row with the longest list "
                "among the stream's first steps, or cap the lists"
            )
        return (
            f"{where} has {len(laid.tokenized)} pairs of {int(laid.tokenized.lengths.sum())} tokens, more than the "
            f"{plan.rows} rows of {plan.row_lengths[-1]} tokens of a group that every process planned from the "
            "stream's first steps (a multi-host run has one shape). Put rows that long among the stream's first "
            "steps, or lower max_length"
        )

    # -------------------------------------------------------------------------- the run_fit interface
    def run_fingerprint(self) -> dict[str, Any]:
        from crossjax.streaming import data_file_names, shuffle_fingerprint

        fingerprint = {
            "stream": self.source.description,  # the data itself cannot be hashed: what is known of it
            "stream_files": data_file_names(self.source.source),
            "stream_shuffle": shuffle_fingerprint(self.source.source),
            "batch_size": self.batch_size,
            "sampler": "stream_order",
            "drop_last": self.drop_last,
            "data_seed": self.seed,
        }
        if self.processes > 1:  # each process's position is in its own shard: P fixes the shards
            fingerprint["processes"] = self.processes
        return fingerprint

    def resume(self, meta: dict[str, Any]) -> None:
        super().resume(meta)
        self.rows_read = self.own_position(meta, "stream_rows")
        self._set_geometry((int(meta["docs"]), int(meta["label_width"])))
        self.label_dtype = np.dtype(meta.get("label_dtype", "float32"))
        saved, pairs = meta["packing_plan"], self.queries_per_group * self.docs
        self.packing_plan = packing.PackingPlan(
            int(saved["rows"]), tuple(int(t) for t in saved["row_lengths"]), self.groups, pairs
        )

    def stream_position(self) -> int:
        return self.rows_read

    def _set_geometry(self, widths: tuple[int, int]) -> None:
        """The step's shapes for (D, K) documents and label columns per query: planned, or a checkpoint's."""
        self.docs, self.label_width = widths
        self.chunks, self.groups, self.queries_per_group = step_geometry(
            self.target.plan, self.loss, self.batch_size, self.k, self.docs
        )

    def _widen(self, widths: tuple[int, int], where: str) -> None:
        """A later step's rows need more documents (or label columns) per query than the planning steps did: the
        run's (D, K) grow onto :func:`~crossjax.packing.grid_ceiling`'s grid (a new compiled shape; later
        steps of about that width share it), as a longer row gets one more row length. A loss whose
        ``mini_batch_size`` would then split a micro-batch into another number of chunks (another program) is
        refused by name instead."""
        docs, label_width = (
            old if new <= old else packing.grid_ceiling(new)
            for old, new in zip((self.docs, self.label_width), widths, strict=True)
        )
        chunks = step_geometry(self.target.plan, self.loss, self.batch_size, self.k, docs)[0]
        if chunks != self.chunks:
            raise ValueError(
                f"{self.name}: the rows of {where} need {widths[0]} documents and {widths[1]} label columns per "
                f"query; the run's shapes were planned for {self.docs} and {self.label_width} from its first steps, "
                f"and its mini_batch_size splits wider lists into another number of chunks. Put a row with the "
                "longest list first in the stream, or cap the lists"
            )
        logger.info(
            "%s: %s needs %d documents per query; the run's lists widen from %d to %d (one more compiled shape)",
            self.name, where, widths[0], self.docs, docs,
        )  # fmt: skip
        plan = self.packing_plan
        self.docs, self.label_width = docs, label_width
        self.packing_plan = packing.PackingPlan(plan.rows, plan.row_lengths, plan.groups, self.queries_per_group * docs)

    def start(self, start_step: int) -> None:
        """Start the reader and read the planning steps: a bad row among them is reported before compiling."""
        import copy

        from crossjax.streaming import BackgroundReader

        super().start(start_step)
        tokenizer = copy.deepcopy(self.target.tokenizer)  # the main thread's evaluators may tokenize meanwhile
        planning = min(ListData.PLAN_SAMPLE_STEPS, self.total_steps - start_step)
        self.lookahead = []
        if self.processes > 1:  # plan from the whole stream's first steps (the same on every process)
            if self.packing_plan is None:
                sample = list(itertools.islice(self._laid_steps(0, 0, tokenizer), planning))
                self._plan(sample, start_step, self.target.max_length)
            plan = self.packing_plan
            local_groups = len(process_rows(self.target.plan.batch, self.groups))
            self.local_plan = packing.PackingPlan(plan.rows, plan.row_lengths, local_groups, plan.pairs)
            read = lambda: self._shard_laid_steps(start_step, self.rows_read, tokenizer)  # noqa: E731
            self.reader = BackgroundReader(read, name="crossjax-trainer-stream")
            return
        read = lambda: self._laid_steps(start_step, self.rows_read, tokenizer)  # noqa: E731
        self.reader = BackgroundReader(read, name="crossjax-trainer-stream")
        try:
            self.lookahead = self.reader.take(planning)
            if self.packing_plan is None:
                self._plan(self.lookahead, start_step)
        except BaseException:
            self.reader.close()
            raise

    def _plan(self, lookahead: list[Any], start_step: int, min_row_length: int = 0) -> None:
        """(D, K) and the packed shapes from the laid planning steps (refused where there are none)."""
        if not lookahead and start_step == 0:
            if self.dropped:
                raise ValueError(
                    f"{self.name}: no full batch of {self.batch_size} rows with dataloader_drop_last=True: the "
                    f"stream ({self.source.description}) holds {self.dropped} only"
                )
            raise ValueError(f"{self.name} is empty: the stream ({self.source.description}) holds no rows")
        self._set_geometry(tuple(max(w[i] for _, _, w in lookahead) for i in (0, 1)))
        self.packing_plan = plan_list_packing(self, [laid for laid, _, _ in lookahead], min_row_length)
        self.label_dtype = lookahead[0][0].labels.dtype

    def _next(self) -> Any:
        return self.lookahead.pop(0) if self.lookahead else self.reader.next_step()

    def steps(self) -> Any:
        """The steps left, the last one known by reading one step ahead; a callback's epoch stop (the run's one
        epoch) ends them."""
        from crossjax.streaming import read_ahead

        if self.processes > 1:
            yield from self._shard_steps()
            return
        global_step = self.start_step
        for (laid, end, widths), last, failure in read_ahead(self._next, self.total_steps - global_step):
            if self.position(global_step) >= self.steps_per_epoch:  # a callback ended the run's one epoch
                return
            if widths[0] > self.docs or widths[1] > self.label_width:
                self._widen(widths, f"step {global_step + 1} (stream rows {self.rows_read} to {end - 1})")
            if last and global_step + 1 < self.total_steps:
                logger.warning(
                    "The stream of %s ended after %d rows, before max_steps=%d: training stops at step %d",
                    self.name,
                    end,
                    self.total_steps,
                    global_step + 1,
                )
            step = self.train_step(0, global_step + 1, last, laid)
            self.rows_read = end
            yield step
            global_step += 1
            if failure is not None:  # raised before the step that would hold the bad row
                raise failure
        if global_step == self.start_step and 0 < global_step < self.total_steps:
            logger.warning(
                "%s has no rows past the data position of the checkpoint it resumes (%d rows read by step %d): "
                "nothing is trained",
                self.name,
                self.rows_read,
                global_step,
            )

    def _shard_steps(self) -> Any:
        """Multi-host: this process's rows of each step, packed into its groups (empty once its shard is used
        up); a callback's epoch stop ends them on every process alike."""
        from crossjax.streaming import concat_pairs

        empty = ListStep(
            concat_pairs([]), np.zeros((0, self.docs), np.int64), np.zeros((0, self.label_width), self.label_dtype)
        )

        def pack_step(item: tuple[ListStep, int] | None) -> tuple[packing.PackedBatch, int]:
            laid = empty if item is None else item[0]
            laid = ListStep(laid.tokenized, laid.index, laid.labels.astype(self.label_dtype))  # every process alike
            batch = pack_list_step(
                laid, self.local_plan, self.queries_per_group, self.docs, self.label_width, self.target.pad_id
            )
            if item is not None:
                self.rows_read = item[1]
            return batch, len(laid.tokenized)

        for step in self.shard_train_steps(iter(self.reader.next_step, None), pack_step, self.k):
            yield step
            if self.position(step.steps_in_epoch) >= self.steps_per_epoch:  # a callback ended the run's one epoch
                return

    def checkpoint_meta(self) -> dict[str, Any]:
        plan = {"rows": self.packing_plan.rows, "row_lengths": list(self.packing_plan.row_lengths)}
        meta = {
            **super().checkpoint_meta(),
            "stream_rows": self.rows_read,
            "docs": self.docs,
            "label_width": self.label_width,
            "label_dtype": self.label_dtype.name,
            "packing_plan": plan,
        }
        if self.processes > 1:  # saving is collective anyway: every process's position, in process order
            meta["stream_rows_per_process"] = self.positions_of_processes()
            meta["stream_rows"] = sum(meta["stream_rows_per_process"])
        return meta

    def describe(self) -> tuple[int | None, list[tuple[list[Any], Any]]]:
        """A stream's length is unknown; its first rows' (inputs, label), once read."""
        if not self.first_rows:
            return None, []
        columns, labels = self.to_columns(self.first_rows, 0)
        rows = [[column[i] for column in columns] for i in range(len(self.first_rows))]
        return None, [(inputs, None if labels is None else labels[i]) for i, inputs in enumerate(rows)]

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "stream_rows": self.rows_read}

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
