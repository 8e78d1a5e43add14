"""Sequence packing: the pairs of a batch laid end to end in a few fixed-length rows, so no compute is spent
on padding and the compiled shapes stay few.

A step's pairs are dealt into ``G`` groups (one per data shard and gradient-accumulation micro-batch, so each
device and micro-batch packs and reads only its own rows), and each group's pairs are packed
first-fit-decreasing into ``R`` rows of ``T`` tokens. Every pair is a segment of its row: attention stays
inside a segment (block-diagonal, from ``segment_ids``), positions restart at each pair, token types are the
pair's own, and the classification head reads each pair's first token (``pair_row``, ``pair_start``). Families
whose head reads nothing else compute their last layer for those tokens only
(:func:`crossjax.models.base.first_tokens_pay`). Logits come back one row per pair slot, in the order of
``indices``, so losses and ``batch_size`` keep their meaning.

**The shape rule.** ``P`` (pair slots per group) is the batch size divided by the groups. ``R`` (rows per
group) is fixed for a run and ``T`` (tokens per row) takes at most ``max_shapes`` values, so a run compiles
at most ``max_shapes`` programs. For every planned step the packer finds the shortest row length (a multiple
of 8, at least the step's longest pair) at which first-fit-decreasing fits the step into ``R`` rows; it picks
the ``max_shapes`` row lengths that minimise the computed tokens over the whole run (an exact dynamic
programme over the histogram of needs); and it picks ``R`` among a few candidates (rows of about 64 to 512
tokens) to minimise the estimated compute of the run, counting attention's cost, which grows with ``T``
(per token about ``2.5 T / (6 * hidden)`` of the dense layers' cost, :data:`ATTENTION_WEIGHT`). Few long
rows pack tightest; many short rows waste less attention; the estimate settles it per model and data set.
Fewer than ``max_shapes`` row lengths are taken where another would save less compute than its compile costs
(:func:`plan_call`): in training a compile is priced at :data:`TRAIN_COMPILE_FLOPS` (a constant, so the plan
stays a pure function of the run), in ``predict`` at what the process measured (:class:`CompileEconomy`).

This module is numpy only: plans and batches are built on the host before anything is compiled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

__all__ = [
    "PackedBatch",
    "PackingPlan",
    "row_length_needed",
    "choose_row_counts",
    "plan_packing",
    "plan_grouped_packing",
    "token_budget_shape",
    "token_budget_steps",
    "deal_into_groups",
    "grid_ceiling",
    "grid_plan",
    "grid_values",
    "CompileEconomy",
    "plan_call",
    "plan_calls_sharing_shapes",
    "run_cost",
    "step_cost",
    "train_compile_cost",
    "unit_flops",
    "reuse_compiled_shapes",
    "fitting_prefix",
    "rows_needed",
    "pack",
    "one_pair_per_row",
]


@dataclass
class PackedBatch:
    """One static-shape packed step. Token arrays are ``[G, R, T]``, pair arrays ``[G, P]``."""

    input_ids: np.ndarray  # int32 [G, R, T]
    token_type_ids: np.ndarray  # int32 [G, R, T]
    segment_ids: np.ndarray  # int32 [G, R, T]: 0 on padding, k >= 1 for the row's k-th pair
    position_ids: np.ndarray  # int32 [G, R, T]: a token's position inside its pair (0 on padding)
    pair_row: np.ndarray  # int32 [G, P]: the row (inside the group) holding pair slot p
    pair_start: np.ndarray  # int32 [G, P]: the column of its first token
    labels: np.ndarray  # [G, P]
    example_mask: np.ndarray  # float32 [G, P]: 1 for a real pair, 0 for an empty slot
    indices: np.ndarray  # int64 [G, P]: the example of each slot, -1 for an empty slot (host only)
    # List batches (ranking losses): each group holds whole queries, Q of them, each with up to D documents.
    list_index: np.ndarray | None = None  # int32 [G, Q, D]: pair slot (in the group) of doc d of query q, -1 none
    list_labels: np.ndarray | None = None  # [G, Q, K]: the loss's targets per query
    query_mask: np.ndarray | None = None  # bool [G, Q]: False for the padding queries of a partial step

    @property
    def real_tokens(self) -> int:
        return int((self.segment_ids > 0).sum())

    @property
    def computed_tokens(self) -> int:
        return int(self.input_ids.size)

    def device_fields(self) -> dict[str, np.ndarray]:
        """The arrays the jitted step takes (``indices`` stays on the host)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "indices" and getattr(self, f.name) is not None
        }

    def take_groups(self, groups: np.ndarray) -> PackedBatch:
        """The given groups only (what one process feeds in a multi-host run)."""
        return PackedBatch(
            **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[groups] for f in fields(self)}
        )


@dataclass(frozen=True)
class PackingPlan:
    """The static shapes of a run: ``groups`` x ``rows`` x one of ``row_lengths`` tokens; ``pairs`` slots a group."""

    rows: int
    row_lengths: tuple[int, ...]
    groups: int
    pairs: int

    def row_length_for(self, needed: int) -> int:
        for length in self.row_lengths:
            if length >= needed:
                return length
        # A step the plan did not see (a stream's later steps) gets one more shape, on a coarse grid (four row
        # lengths an octave, at most 25% longer than needed) so that such steps share a few programs rather
        # than compile one for every new length.
        return grid_ceiling(needed, ROW_QUANTUM)

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return [(self.groups, self.rows, length) for length in self.row_lengths]


def model_width(config) -> int:
    """The hidden size the packer weighs attention against (DistilBERT calls it ``dim``)."""
    return int(getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 768)


def unit_flops(config) -> float:
    """The forward FLOPs of one :func:`step_cost` unit (a token of a short row): every layer's dense matmuls,
    ``2 * (4 h^2 + 2 h I)`` (attention's share is what :func:`step_cost` adds for longer rows)."""
    hidden = model_width(config)
    layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None) or 12)
    inner = int(getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * hidden)
    return 2.0 * layers * (4.0 * hidden * hidden + 2.0 * hidden * inner)


ROW_QUANTUM = 8  # row lengths are multiples of 8 (what accelerator matrix units like)
# Before a program's compile and compute were measured, a compile is priced at this many steps of its shape.
COMPILE_STEPS = 8.0
# What compiling one more train-step shape is worth, in FLOPs of training: about 3.5 s of tracing and compiling
# at the ~90 GFLOP/s a 2-core CPU trains MiniLM at (benchmarks/RESULTS.md, "Session 8"). A compile takes seconds
# whatever the model, a step's time grows with its FLOPs, so a number of steps cannot price it for both MiniLM's
# 0.3 s steps and a 2.4 s list step. A constant, not a measurement: a run's plan stays a pure function of its
# data, model and settings, the same in every process, in a resumed run and on any machine. An accelerator
# compiles for longer and computes far faster, so there this under-prices a compile (more second shapes than
# would pay: the behaviour before pricing).
TRAIN_COMPILE_FLOPS = 3e11


def train_compile_cost(config, micro_batches: int = 1, planned_fraction: float = 1.0) -> float:
    """:data:`TRAIN_COMPILE_FLOPS` in :func:`step_cost` units of one group, for :func:`plan_call`: a step runs
    ``micro_batches`` groups one after another on each device (forward and backward: 3x the forward FLOPs).
    ``planned_fraction`` is the share of the run's steps the plan is made on (a sample, a stream's first steps):
    the compile is weighed against the compute saved on those steps only."""
    return TRAIN_COMPILE_FLOPS * planned_fraction / (3.0 * unit_flops(config) * max(1, int(micro_batches)))


def _fits(lengths: np.ndarray, rows: int, row_length: int) -> list[list[int]] | None:
    """First-fit-decreasing into ``rows`` rows of ``row_length``: positions per row, or None if it fails.

    Pairs are taken longest first (ties in input order), each into the first row with room for it. Pairs of
    one length are placed together: they fill the rows with room for that length in row order, each row
    taking as many as fit, which is where one-by-one first fit puts them. So the work grows with the distinct
    lengths times the rows, not with the pairs times the rows (a call of 30,000 pairs stays fast).
    """
    values = np.asarray(lengths).tolist()
    order = sorted(range(len(values)), key=values.__getitem__, reverse=True)  # stable: ties keep input order
    layout: list[list[int]] = [[] for _ in range(rows)]
    free = [row_length] * rows
    start = 0
    while start < len(order):
        length = values[order[start]]
        end = start + 1
        while end < len(order) and values[order[end]] == length:
            end += 1
        for r in range(rows):
            if start == end:
                break
            room = end - start if length <= 0 else free[r] // length
            if room:
                taken = min(room, end - start)
                layout[r].extend(order[start : start + taken])
                free[r] -= taken * length
                start += taken
        if start < end:
            return None
    return layout


def fits_rows(lengths: np.ndarray, rows: int, row_length: int) -> bool:
    """Whether :func:`pack` lays pairs of ``lengths`` out in ``rows`` rows of ``row_length`` tokens."""
    lengths = np.asarray(lengths)
    return not len(lengths) or (int(lengths.max()) <= row_length and _fits(lengths, rows, row_length) is not None)


def row_length_needed(lengths: np.ndarray, rows: int) -> int:
    """The shortest row length (a multiple of 8) at which first-fit-decreasing fits ``lengths`` in ``rows``."""
    lengths = np.asarray(lengths)
    if not len(lengths):
        return ROW_QUANTUM
    t = max(int(lengths.max()), math.ceil(int(lengths.sum()) / rows))
    t = math.ceil(t / ROW_QUANTUM) * ROW_QUANTUM
    while _fits(lengths, rows, t) is None:
        t += ROW_QUANTUM
    return t


def choose_row_counts(needed: Sequence[int], max_shapes: int) -> tuple[int, ...]:
    """At most ``max_shapes`` values minimising the total when each need is rounded up to one of them.

    An exact dynamic programme over the distinct needs (the largest is always chosen).
    """
    values, counts = np.unique(np.asarray(needed, dtype=np.int64), return_counts=True)
    k = max(1, min(int(max_shapes), len(values)))
    n = len(values)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    inf = float("inf")
    best = [[inf] * n for _ in range(k + 1)]
    back = [[-1] * n for _ in range(k + 1)]
    for j in range(n):
        best[1][j] = float(values[j] * prefix[j + 1])  # every need up to values[j] rounded up to it
    for m in range(2, k + 1):
        for j in range(n):
            for i in range(j):  # the previous chosen value is values[i]; needs i+1..j round up to values[j]
                cost = best[m - 1][i] + float(values[j] * (prefix[j + 1] - prefix[i + 1]))
                if cost < best[m][j]:
                    best[m][j], back[m][j] = cost, i
    m = min(range(1, k + 1), key=lambda m: best[m][n - 1])
    chosen, j = [], n - 1
    while j >= 0 and m >= 1:
        chosen.append(int(values[j]))
        j, m = back[m][j], m - 1
    return tuple(sorted(chosen))


def deal_into_groups(indices: np.ndarray, lengths: np.ndarray, groups: int) -> list[np.ndarray]:
    """Split a step's examples into ``groups`` of (nearly) equal size with balanced token counts.

    Longest first, each pair goes to the group with the fewest tokens among those not yet full, so every group
    needs about the same number of rows. Deterministic.
    """
    indices = np.asarray(indices, dtype=np.int64)
    per = math.ceil(len(indices) / groups) if len(indices) else 0
    order = indices[np.argsort(-lengths[indices], kind="stable")]
    out: list[list[int]] = [[] for _ in range(groups)]
    tokens = np.zeros(groups, dtype=np.int64)
    for example in order:
        open_groups = [g for g in range(groups) if len(out[g]) < per]
        g = min(open_groups, key=lambda g: (tokens[g], g))
        out[g].append(int(example))
        tokens[g] += int(lengths[example])
    return [np.asarray(sorted(g), dtype=np.int64) for g in out]


def rows_needed(lengths: np.ndarray, row_length: int) -> int:
    """The fewest rows of ``row_length`` tokens that first-fit-decreasing fits ``lengths`` into."""
    lengths = np.asarray(lengths)
    if not len(lengths):
        return 1
    if int(lengths.max()) > row_length:
        raise ValueError(f"a pair of {int(lengths.max())} tokens does not fit a row of {row_length}")
    rows = max(1, math.ceil(int(lengths.sum()) / row_length))
    while _fits(lengths, rows, row_length) is None:
        rows += 1
    return rows


def with_row_length_floor(plan: PackingPlan, group_lengths: Sequence[np.ndarray], min_row_length: int) -> PackingPlan:
    """``plan``, or, where its rows are shorter than ``min_row_length`` (a multi-host stream's ``max_length``), one
    shape of rows that long (rounded up to :data:`ROW_QUANTUM`), as many rows as the planning groups
    ``group_lengths`` need: so any later pair fits a row, whatever shard it comes from."""
    floor = math.ceil(min_row_length / ROW_QUANTUM) * ROW_QUANTUM
    if plan.row_lengths[-1] >= floor:
        return plan
    rows = max((rows_needed(lengths, floor) for lengths in group_lengths), default=1)
    return PackingPlan(rows, (floor,), plan.groups, plan.pairs)


def fitting_prefix(lengths: np.ndarray, groups: int, pairs: int, rows: int, row_length: int) -> int:
    """How many leading examples of ``lengths`` (at most ``groups * pairs``) :func:`pack` lays out in ``groups``
    groups of ``rows`` rows of ``row_length`` tokens: the longest such prefix, found by bisection (0 when the
    first example alone is longer than a row). A multi-host stream trains that prefix and defers the rest, so
    its step keeps the shape every process agreed on."""
    lengths = np.asarray(lengths)

    def fits(n: int) -> bool:
        head = lengths[:n]
        return all(fits_rows(head[g], rows, row_length) for g in deal_into_groups(np.arange(n), head, groups))

    good, bad = 0, min(len(lengths), groups * pairs) + 1
    if fits(bad - 1):
        return bad - 1
    bad -= 1
    while bad - good > 1:  # fits(good) and not fits(bad)
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def plan_packing(
    steps: Sequence[np.ndarray],
    lengths: np.ndarray,
    groups: int,
    pairs: int,
    hidden_size: int = 768,
    max_shapes: int = 2,
    rows: int | None = None,
    sample_steps: int = 256,
    compile_cost: float | None = None,
) -> PackingPlan:
    """The static shapes for packing ``steps`` (each an array of example indices): see the module docstring.

    ``rows`` fixes ``R`` instead of choosing it. ``R`` is chosen on at most ``sample_steps`` evenly spaced
    steps (the choice is statistical); the row lengths are then planned over every step, so every step fits.
    With ``compile_cost`` (a training run's :func:`train_compile_cost`), up to ``max_shapes`` row lengths, as
    many as pay for their compiles (:func:`plan_call`).
    """
    if groups < 1 or pairs < 1:
        raise ValueError(f"groups and pairs must be >= 1, got {groups} and {pairs}")
    lengths = np.asarray(lengths)
    group_lengths = [[lengths[g] for g in deal_into_groups(step, lengths, groups)] for step in steps if len(step)]
    if compile_cost is not None and rows is None:
        return plan_call(group_lengths, groups, pairs, hidden_size, max_shapes, (), compile_cost, sample_steps)
    return plan_grouped_packing(group_lengths, groups, pairs, hidden_size, max_shapes, rows, sample_steps)


def plan_grouped_packing(
    group_lengths: Sequence[Sequence[np.ndarray]],
    groups: int,
    pairs: int,
    hidden_size: int = 768,
    max_shapes: int = 2,
    rows: int | None = None,
    sample_steps: int = 256,
) -> PackingPlan:
    """:func:`plan_packing` for steps already dealt into groups: ``group_lengths[s][g]`` are the token counts of
    the pairs of group ``g`` of step ``s`` (how list batches plan: a query's pairs stay in one group)."""
    if groups < 1 or pairs < 1:
        raise ValueError(f"groups and pairs must be >= 1, got {groups} and {pairs}")
    group_lists = _nonempty(group_lengths)
    if not group_lists:
        return PackingPlan(ROW_QUANTUM, (1,), groups, pairs)
    if rows is None:
        rows = _choose_rows(group_lists, max_shapes, hidden_size, sample_steps)
    return PackingPlan(int(rows), choose_row_counts(_row_needs(group_lists, rows), max_shapes), int(groups), int(pairs))


def _nonempty(group_lengths: Sequence[Sequence[np.ndarray]]) -> list[Sequence[np.ndarray]]:
    return [step for step in group_lengths if any(len(g) for g in step)]


def _row_needs(group_lists: Sequence[Sequence[np.ndarray]], rows: int) -> np.ndarray:
    """Each step's shortest row length at ``rows`` rows a group (its largest group decides)."""
    return np.array([max(row_length_needed(g, rows) for g in step) for step in group_lists], dtype=np.int64)


def _needs_cost(needs: np.ndarray, rows: int, row_lengths: Sequence[int], hidden_size: int) -> float | None:
    """:func:`run_cost` from the steps' row needs: each step runs in the shortest row length it fits."""
    lengths = np.asarray(sorted(row_lengths), dtype=np.int64)
    slot = np.searchsorted(lengths, needs)
    if len(needs) and int(slot.max()) == len(lengths):
        return None
    return float(np.sum(step_cost(rows, lengths[slot], hidden_size)))


def _choose_rows(
    group_lists: Sequence[Sequence[np.ndarray]], max_shapes: int, hidden_size: int, sample_steps: int
) -> int:
    """``R``: the candidate (rows of about 64 to 512 tokens) of least estimated compute on at most
    ``sample_steps`` evenly spaced steps, each rounded up to the ``max_shapes`` row lengths chosen for it."""
    every = max(1, len(group_lists) // sample_steps)
    sample = group_lists[::every]
    totals = np.array([int(g.sum()) for step in sample for g in step])
    typical = float(np.median(totals))
    candidates = sorted({max(1, math.ceil(typical / t)) for t in (64, 96, 128, 192, 256, 384, 512)})

    def cost_with(r: int) -> float:
        needs = _row_needs(sample, r)
        return _needs_cost(needs, r, choose_row_counts(needs, max_shapes), hidden_size)

    return int(min(candidates, key=cost_with))


@dataclass
class CompileEconomy:
    """What one program's calls measured, to price compiling a shape against running a bigger one: the mean
    compile (or cache-load) time times the compute done per second, in :func:`step_cost`'s units. A compile
    takes about a second on a CPU and tens of seconds on a GPU, a step milliseconds to seconds, so neither a
    fixed time nor a fixed number of steps prices it everywhere. ``debts`` is :func:`reuse_compiled_shapes`'
    memory of the extra compute spent on bigger shapes, per plan. A multi-process run records nothing (each
    process would measure other times and plan other shapes), so it prices compiles by ``COMPILE_STEPS``."""

    compile_seconds: float = 0.0
    compiles: int = 0
    compute_seconds: float = 0.0
    compute: float = 0.0
    debts: dict = field(default_factory=dict)

    def record(self, compute: float, seconds: float, compiles: int, compile_seconds: float) -> None:
        """A call that ran ``compute`` (:func:`step_cost` units) in ``seconds`` of wall time, ``compile_seconds`` of
        them tracing and compiling its ``compiles`` new shapes."""
        if compiles > 0 and compile_seconds > 0:
            self.compiles += compiles
            self.compile_seconds += compile_seconds
        if seconds - compile_seconds > 0 and compute > 0:
            self.compute_seconds += seconds - compile_seconds
            self.compute += compute

    def compile_cost(self) -> float | None:
        """One compile in :func:`step_cost` units, or None before a compile and a call were timed."""
        if not self.compiles or self.compute_seconds <= 0:
            return None
        return self.compile_seconds / self.compiles * self.compute / self.compute_seconds


# Attention's matmuls cost ``T / (6 * hidden)`` of the dense layers' per token, but its (T x T) scores also go
# through masking, softmax and dropout (memory-bound, and recomputed in the backward pass): MiniLM train steps of
# 2,688 tokens took 1,395 / 1,517 / 1,581 / 1,795 ms in rows of 96 / 128 / 192 / 384 tokens on a CPU, against
# 1.00 / 1.01 / 1.04 / 1.12 times the first by matmul FLOPs alone (benchmarks/RESULTS.md, "Session 8").
ATTENTION_WEIGHT = 2.5


def step_cost(rows: int, row_length: int, hidden_size: int) -> float:
    """The packer's estimate of a step's compute per group: its tokens, attention's share growing with the row
    length (per token ``ATTENTION_WEIGHT * T / (6 * hidden)`` of the dense layers' cost)."""
    return rows * row_length * (1.0 + ATTENTION_WEIGHT * row_length / (6.0 * hidden_size))


def run_cost(
    group_lengths: Sequence[Sequence[np.ndarray]], rows: int, row_lengths: Sequence[int], hidden_size: int
) -> float | None:
    """The estimated compute (:func:`step_cost`) of the steps ``group_lengths`` (as in
    :func:`plan_grouped_packing`), each packed into ``rows`` rows of the shortest of ``row_lengths`` it fits;
    None when a step fits none of them."""
    return _needs_cost(_row_needs(group_lengths, rows), rows, row_lengths, hidden_size)


def plan_call(
    group_lengths: Sequence[Sequence[np.ndarray]],
    groups: int,
    pairs: int,
    hidden_size: int = 768,
    max_shapes: int = 2,
    compiled: Iterable[tuple[int, int, int, int]] = (),
    compile_cost: float | None = None,
    compile_steps: float = COMPILE_STEPS,
    sample_steps: int = 256,
) -> PackingPlan:
    """:func:`plan_grouped_packing` with at most ``max_shapes`` shapes, as many as pay for their compiles: each
    shape not in ``compiled`` (``(groups, rows, row length, pairs)`` tuples) is priced at ``compile_cost`` (in
    :func:`step_cost`'s units, as measured by :class:`CompileEconomy` or :func:`train_compile_cost`), or before
    any measurement at ``compile_steps`` steps of it. So a call of a few steps does not compile a second row
    length that saves 1% of its compute, and one whose shapes are compiled (the same pairs again) takes the
    tightest plan."""
    if groups < 1 or pairs < 1:
        raise ValueError(f"groups and pairs must be >= 1, got {groups} and {pairs}")
    have = {(r, t) for g, r, t, p in compiled if g == groups and p == pairs}
    steps = _nonempty(group_lengths)
    if not steps:
        return PackingPlan(ROW_QUANTUM, (1,), groups, pairs)
    needs_at: dict[int, np.ndarray] = {}  # rows -> each step's row need (the costly part: computed once)
    best = None
    for k in range(1, max(1, int(max_shapes)) + 1):
        rows = _choose_rows(steps, k, hidden_size, sample_steps)
        if rows not in needs_at:
            needs_at[rows] = _row_needs(steps, rows)
        needs = needs_at[rows]
        plan = PackingPlan(rows, choose_row_counts(needs, k), int(groups), int(pairs))
        compiling = sum(
            compile_steps * step_cost(plan.rows, t, hidden_size) if compile_cost is None else compile_cost
            for t in plan.row_lengths
            if (plan.rows, t) not in have
        )
        cost = _needs_cost(needs, rows, plan.row_lengths, hidden_size) + compiling
        if best is None or cost < best[0]:
            best = (cost, plan)
    return best[1]


def grid_ceiling(n: int, quantum: int = 1) -> int:
    """The smallest value >= ``n`` of the grid ``quantum`` x (1, 2, ..., 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...):
    four values an octave, so a shape rounded onto it is at most 25% (9% on average) larger than asked and the
    shapes of calls with other sizes coincide."""
    units = max(1, -(-int(n) // quantum))
    if units <= 8:
        return units * quantum
    step = 1 << (units.bit_length() - 3)
    return -(-units // step) * step * quantum


def grid_plan(
    plan: PackingPlan, group_lengths: Sequence[Sequence[np.ndarray]], hidden_size: int = 768
) -> PackingPlan:
    """``plan`` moved onto :func:`grid_ceiling`'s grid (rows, and row lengths in units of 8 tokens), for the
    steps ``group_lengths`` (as in :func:`plan_grouped_packing`). A call of a few pairs (one query's
    candidates) then reuses the programs compiled for other calls of about its size.

    Rounding the rows up, then the row length they need, costs up to 25% each, so up to 56% together (128
    STS-B pairs planned at 38 x 72 went to 40 x 80: 3,200 tokens where 48 x 56 holds them in 2,688). So every
    grid row count from half to twice ``plan.rows`` is tried, each with its steps' needs rounded onto the
    grid, and the one of least :func:`step_cost` is taken."""
    steps = _nonempty(group_lengths)
    if not steps:
        return PackingPlan(grid_ceiling(plan.rows), (ROW_QUANTUM,), plan.groups, plan.pairs)
    best = None
    for rows in grid_values(plan.rows // 2, 2 * plan.rows):  # holds grid_ceiling(plan.rows) (<= 1.25 x rows)
        needs = _row_needs(steps, rows)
        lengths = sorted({grid_ceiling(t, ROW_QUANTUM) for t in choose_row_counts(needs, len(plan.row_lengths))})
        cost = _needs_cost(needs, rows, lengths, hidden_size)
        if best is None or cost < best[0]:
            best = (cost, PackingPlan(rows, tuple(lengths), plan.groups, plan.pairs))
    return best[1]


def grid_values(low: int, high: int) -> list[int]:
    """The values of :func:`grid_ceiling`'s grid from ``low`` to ``high`` (both included where on the grid)."""
    values, n = [], grid_ceiling(max(1, int(low)))
    while n <= high:
        values.append(n)
        n = grid_ceiling(n + 1)
    return values


def reuse_compiled_shapes(
    plan: PackingPlan,
    group_lengths: Sequence[Sequence[np.ndarray]],
    compiled: Iterable[tuple[int, int, int, int]],
    hidden_size: int = 768,
    debts: dict | None = None,
    compile_cost: float | None = None,
    compile_steps: float = COMPILE_STEPS,
    slack: float = 0.25,
) -> PackingPlan:
    """Shapes already compiled (``compiled``: ``(groups, rows, row length, pairs)`` tuples) instead of ``plan``'s
    new ones, when they fit every step of ``group_lengths`` and cost little more compute; the plan returned uses
    the row lengths of one row count.

    Within ``slack`` of the call's compute a compiled shape is always used. Beyond it, renting a compiled shape
    is weighed against buying the planned ones: compiling a shape costs ``compile_cost`` (see
    :func:`plan_call`; before any measurement ``compile_steps`` steps of the largest new shape), and ``debts``
    (kept by the caller across calls, per plan) sums the extra compute that calls planned like this one
    already spent on bigger shapes. Once it would pass the compile cost, the plan's shapes are compiled: never
    more than twice the cost of the best choice in hindsight (ski rental), and a shape that calls keep asking
    for is compiled after a few calls."""
    shapes = {(r, t) for g, r, t, p in compiled if g == plan.groups and p == plan.pairs}
    new = [t for t in plan.row_lengths if (plan.rows, t) not in shapes]
    steps = _nonempty(group_lengths)
    if not new or not shapes or not steps:
        return plan

    planned = run_cost(steps, plan.rows, plan.row_lengths, hidden_size)
    if planned is None:
        return plan
    best = None
    for rows in sorted({r for r, _ in shapes}):
        lengths = tuple(sorted(t for r, t in shapes if r == rows))
        cost = run_cost(steps, rows, lengths, hidden_size)
        if cost is not None and (best is None or cost < best[0]):
            best = (cost, rows, lengths)
    if best is None:
        return plan
    extra = best[0] - planned
    key = (plan.groups, plan.rows, plan.row_lengths, plan.pairs)
    owed = 0.0 if debts is None else debts.get(key, 0.0)
    each = compile_steps * step_cost(plan.rows, max(new), hidden_size) if compile_cost is None else compile_cost
    compiling = len(new) * each
    if extra > slack * planned:
        if owed + extra >= compiling:
            if debts is not None:
                debts.pop(key, None)
            return plan
        if debts is not None:
            debts[key] = owed + extra
    return PackingPlan(best[1], best[2], plan.groups, plan.pairs)


def plan_calls_sharing_shapes(
    group_lengths: Sequence[Sequence[np.ndarray]],
    groups: int,
    pairs: int,
    hidden_size: int,
    max_shapes: int,
    compiled: Iterable[tuple[int, int, int, int]],
    economy: CompileEconomy,
) -> PackingPlan:
    """The plan of one call among many of a process (predict): :func:`plan_call`; rounded onto the grid
    (:func:`grid_plan`) when compiling a shape costs more than the call itself, so that later calls of about
    its size share the shape; then shapes already compiled where renting them is cheaper
    (:func:`reuse_compiled_shapes`). Compiles are priced by ``economy``'s measurements of earlier calls."""
    compiled = list(compiled)
    compile_cost = economy.compile_cost()
    plan = plan_call(group_lengths, groups, pairs, hidden_size, max_shapes, compiled, compile_cost)
    steps = _nonempty(group_lengths)
    if steps:
        call = run_cost(steps, plan.rows, plan.row_lengths, hidden_size) or 0.0
        largest = step_cost(plan.rows, max(plan.row_lengths), hidden_size)
        if (COMPILE_STEPS * largest if compile_cost is None else compile_cost) > call:
            plan = grid_plan(plan, steps, hidden_size)
    return reuse_compiled_shapes(plan, group_lengths, compiled, hidden_size, economy.debts, compile_cost)


def within_shape_cap(
    plan: PackingPlan,
    group_lengths: Sequence[Sequence[np.ndarray]],
    compiled: Iterable[tuple[int, int, int, int]],
    hidden_size: int,
    cap: int,
) -> tuple[PackingPlan, bool]:
    """``plan`` kept within ``cap`` compiled shapes (``compiled``: ``(groups, rows, row length, pairs)`` tuples, a
    program's): when its new shapes would pass the cap, the compiled shapes that hold every step are used
    whatever their cost; when none holds them, ``plan`` is returned with True: the caller forgets the compiled
    shapes before running it. So a server whose calls vary without end keeps a bounded number of programs."""
    shapes = set(compiled)
    new = {t for t in plan.row_lengths if (plan.groups, plan.rows, t, plan.pairs) not in shapes}
    if len(shapes) + len(new) <= cap:
        return plan, False
    reused = reuse_compiled_shapes(plan, group_lengths, shapes, hidden_size, compile_cost=math.inf)
    if all((reused.groups, reused.rows, t, reused.pairs) in shapes for t in reused.row_lengths):
        return reused, False
    return plan, True


def token_budget_shape(lengths: np.ndarray, groups: int, max_tokens: int) -> tuple[int, int]:
    """(rows, row length) of token-budget steps: rows of at least 128 tokens (short rows pack badly: two
    30-token pairs rarely fill 64) and at least the longest pair, as many per group as ``max_tokens`` allows;
    shorter rows, down to the longest pair, when the budget holds fewer than one 128-token row per group; no
    more rows than the whole data set fills, when the budget would hold it with room to spare."""
    longest = math.ceil(int(np.max(lengths)) / ROW_QUANTUM) * ROW_QUANTUM
    row_length = max(longest, 128)
    if max_tokens // (groups * row_length) < 1:
        row_length = longest
    rows = max_tokens // (groups * row_length)
    if rows < 1:
        raise ValueError(
            f"max_tokens_per_step={max_tokens} holds less than {groups} group(s) of one row of {longest} tokens "
            "(the longest pair)"
        )
    if rows * groups * row_length > int(np.sum(lengths)):  # the budget holds the whole epoch: no more rows than it
        rows = min(rows, math.ceil(rows_needed(lengths, row_length) / groups))
    return rows, row_length


def token_budget_steps(
    order: np.ndarray, lengths: np.ndarray, groups: int, rows: int, row_length: int, lookahead: int | None = None
) -> list[list[np.ndarray]]:
    """Cut ``order`` (example indices) into steps of one fixed shape: each step fills ``groups`` groups of
    ``rows`` rows of ``row_length`` tokens, and the number of pairs varies (fairseq's ``max_tokens`` batching).

    A step takes the next pairs in order; each goes to the group with the fewest tokens that still fits it
    (checked with the packer's first-fit-decreasing, so :func:`pack` lays the step out exactly). A pair that
    fits nowhere waits, and the next ones in a window of ``lookahead`` pairs may fill the gaps; the step closes
    when no pair of the window fits. So pairs move at most a window's length from their place in the
    (shuffled) order, each is taken once, and the rows end nearly full. The window defaults to four steps'
    worth of pairs (at least 256). Returns each step's examples per group.
    """
    lengths = np.asarray(lengths)
    too_long = [int(i) for i in order if lengths[i] > row_length]
    if too_long:
        first = too_long[0]
        raise ValueError(f"example {first} has {int(lengths[first])} tokens, more than a row's {row_length}")
    capacity = rows * row_length
    if lookahead is None:
        lookahead = max(256, 4 * math.ceil(groups * capacity / max(float(np.mean(lengths)), 1.0)))
    pending = [int(i) for i in order]
    steps: list[list[np.ndarray]] = []
    while pending:
        members: list[list[int]] = [[] for _ in range(groups)]
        tokens = np.zeros(groups, dtype=np.int64)
        taken: set[int] = set()
        for position, example in enumerate(pending[:lookahead]):
            n = int(lengths[example])
            for g in sorted(range(groups), key=lambda g: (tokens[g], g)):
                if tokens[g] + n <= capacity and _fits(lengths[[*members[g], example]], rows, row_length) is not None:
                    members[g].append(example)
                    tokens[g] += n
                    taken.add(position)
                    break
            if tokens.min() + int(lengths.min()) > capacity:  # every group full
                break
        steps.append([np.asarray(m, dtype=np.int64) for m in members])
        pending = [e for position, e in enumerate(pending) if position not in taken]
    return steps


def one_pair_per_row(
    input_ids: np.ndarray, token_type_ids: np.ndarray, labels: np.ndarray, groups: int = 1
) -> PackedBatch:
    """``B`` pairs that each fill a row of ``T`` tokens (no padding), dealt into ``groups`` groups of B / groups
    rows: the layout of benchmarks that time a fixed sequence length."""
    input_ids = np.asarray(input_ids, dtype=np.int32)
    total, length = input_ids.shape
    if total % groups:
        raise ValueError(f"{total} pairs do not split into {groups} groups")
    rows = total // groups
    shape = (groups, rows, length)
    return PackedBatch(
        input_ids=input_ids.reshape(shape),
        token_type_ids=np.asarray(token_type_ids, dtype=np.int32).reshape(shape),
        segment_ids=np.ones(shape, dtype=np.int32),
        position_ids=np.broadcast_to(np.arange(length, dtype=np.int32), shape).copy(),
        pair_row=np.broadcast_to(np.arange(rows, dtype=np.int32), (groups, rows)).copy(),
        pair_start=np.zeros((groups, rows), dtype=np.int32),
        labels=np.asarray(labels).reshape(groups, rows),
        example_mask=np.ones((groups, rows), dtype=np.float32),
        indices=np.arange(total, dtype=np.int64).reshape(groups, rows),
    )


def pack(
    tokenized,
    indices: np.ndarray,
    labels: np.ndarray | None,
    plan: PackingPlan,
    pad_token_id: int,
    dealt: Sequence[np.ndarray] | None = None,
) -> PackedBatch:
    """Pack the examples ``indices`` (at most ``groups * pairs``) into one :class:`PackedBatch` of ``plan``.

    ``dealt`` gives the examples of each group instead of :func:`deal_into_groups` (list batches keep each
    query's pairs together)."""
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) > plan.groups * plan.pairs:
        raise ValueError(f"{len(indices)} examples for {plan.groups} groups of {plan.pairs} pair slots")
    lengths = tokenized.lengths
    if dealt is None:
        dealt = deal_into_groups(indices, lengths, plan.groups)
    elif len(dealt) != plan.groups or any(len(g) > plan.pairs for g in dealt):
        raise ValueError(f"dealt groups do not fit {plan.groups} groups of {plan.pairs} pair slots")
    needed = max((row_length_needed(lengths[group], plan.rows) for group in dealt), default=ROW_QUANTUM)
    t_ = plan.row_length_for(needed)
    layouts = [_fits(lengths[group], plan.rows, t_) for group in dealt]
    g_, rows, p_ = plan.groups, plan.rows, plan.pairs
    input_ids = np.full((g_, rows, t_), pad_token_id, dtype=np.int32)
    token_type_ids = np.zeros((g_, rows, t_), dtype=np.int32)
    segment_ids = np.zeros((g_, rows, t_), dtype=np.int32)
    position_ids = np.zeros((g_, rows, t_), dtype=np.int32)
    pair_row = np.zeros((g_, p_), dtype=np.int32)
    pair_start = np.zeros((g_, p_), dtype=np.int32)
    slot_index = np.full((g_, p_), -1, dtype=np.int64)
    label_dtype = np.float32 if labels is None else np.asarray(labels).dtype
    batch_labels = np.zeros((g_, p_), dtype=label_dtype)
    example_mask = np.zeros((g_, p_), dtype=np.float32)
    offsets, flat_ids, flat_types = tokenized.offsets, tokenized.flat_input_ids, tokenized.flat_token_type_ids
    for g, (group, layout) in enumerate(zip(dealt, layouts, strict=True)):
        slot = 0
        for r, members in enumerate(layout):
            column = 0
            for segment, position in enumerate(members, start=1):
                example = int(group[position])
                n = int(lengths[example])
                start = int(offsets[example])
                input_ids[g, r, column : column + n] = flat_ids[start : start + n]
                token_type_ids[g, r, column : column + n] = flat_types[start : start + n]
                segment_ids[g, r, column : column + n] = segment
                position_ids[g, r, column : column + n] = np.arange(n, dtype=np.int32)
                pair_row[g, slot], pair_start[g, slot], slot_index[g, slot] = r, column, example
                example_mask[g, slot] = 1.0
                if labels is not None:
                    batch_labels[g, slot] = labels[example]
                column += n
                slot += 1
    return PackedBatch(
        input_ids,
        token_type_ids,
        segment_ids,
        position_ids,
        pair_row,
        pair_start,
        batch_labels,
        example_mask,
        slot_index,
    )
