"""Sequence packing: the packer's plans and batches, and packed logits against PyTorch on each pair alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_models_parity import FAMILIES, torch_logits
from transformers import AutoModelForSequenceClassification

from crossjax import data, packing, training
from crossjax.models import FlaxAutoModelForSequenceClassification


def tokenized_pairs(lengths, vocab: int = 101, seed: int = 0) -> data.TokenizedPairs:
    """Random token ids of the given lengths, token type 0 for the first half of each pair and 1 after."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int32)
    ids = [rng.integers(3, vocab, n).astype(np.int32) for n in lengths]
    types = [(np.arange(n) >= n // 2).astype(np.int32) for n in lengths]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return data.TokenizedPairs(np.concatenate(ids), np.concatenate(types), offsets, lengths, int(lengths.max()))


# --------------------------------------------------------------------------------------------- the packer
def test_choose_row_counts_is_optimal_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(30):
        needs = rng.integers(8, 30, size=rng.integers(1, 25))
        for k in (1, 2, 3):
            chosen = packing.choose_row_counts(needs, k)
            values = sorted(set(needs.tolist()))

            def total(choice, needs=needs):
                return sum(min(c for c in choice if c >= n) for n in needs)

            best = min(
                total(choice + (max(values),))
                for m in range(0, min(k, len(values)))
                for choice in itertools.combinations(values[:-1], m)
            )
            assert len(chosen) <= k and max(chosen) == max(values)
            assert total(chosen) == best


def _first_fit_one_by_one(lengths, rows, row_length):
    """First-fit-decreasing as its definition reads: longest first (ties in input order), each pair into the
    first row with room."""
    layout, free = [[] for _ in range(rows)], [row_length] * rows
    for position in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r in range(rows) if free[r] >= lengths[position]), None)
        if row is None:
            return None
        layout[row].append(position)
        free[row] -= lengths[position]
    return layout


def test_first_fit_decreasing_places_every_pair_where_one_by_one_first_fit_does():
    rng = np.random.default_rng(7)
    failed = 0
    for _ in range(2000):
        lengths = rng.integers(1, int(rng.integers(2, 90)), size=int(rng.integers(0, 50))).tolist()
        rows, row_length = int(rng.integers(1, 10)), int(rng.integers(1, 130))
        expected = _first_fit_one_by_one(lengths, rows, row_length)
        failed += expected is None
        assert packing._fits(np.asarray(lengths), rows, row_length) == expected, (lengths, rows, row_length)
    assert 100 < failed < 1900  # both outcomes were exercised
    lengths = rng.integers(8, 120, size=20_000)  # a call of 20,000 pairs: placed by runs of one length
    assert packing._fits(lengths, 2_500, 512) == _first_fit_one_by_one(lengths.tolist(), 2_500, 512)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_every_pair_is_packed_once_as_one_contiguous_segment(groups):
    rng = np.random.default_rng(2)
    lengths = rng.integers(3, 40, size=120)
    tokenized = tokenized_pairs(lengths)
    labels = rng.random(120).astype(np.float32)
    steps = data.plan_batches(lengths, 24, True, 0, 0, False, group_by_length=False)
    plan = packing.plan_packing(steps, lengths, groups, 24 // groups, hidden_size=32, max_shapes=2)
    assert len(plan.row_lengths) <= 2
    seen_shapes = set()
    for step in steps:
        batch = packing.pack(tokenized, step, labels, plan, pad_token_id=0)
        seen_shapes.add(batch.input_ids.shape)
        assert sorted(batch.indices[batch.indices >= 0].tolist()) == sorted(step.tolist())
        for g, p in zip(*np.nonzero(batch.indices >= 0), strict=True):
            example = batch.indices[g, p]
            n, row, start = lengths[example], batch.pair_row[g, p], batch.pair_start[g, p]
            span = slice(start, start + n)
            np.testing.assert_array_equal(batch.input_ids[g, row, span], tokenized.input_ids[example])
            np.testing.assert_array_equal(batch.token_type_ids[g, row, span], tokenized.token_type_ids[example])
            np.testing.assert_array_equal(batch.position_ids[g, row, span], np.arange(n))
            segment = batch.segment_ids[g, row, start]
            assert segment > 0 and (batch.segment_ids[g, row] == segment).sum() == n
            assert batch.labels[g, p] == labels[example] and batch.example_mask[g, p] == 1.0
        assert (batch.example_mask == (batch.indices >= 0)).all()
    assert seen_shapes <= set(plan.shapes)


def test_packing_computes_far_fewer_tokens_than_padding_random_batches():
    rng = np.random.default_rng(3)
    lengths = np.clip(rng.lognormal(3.2, 0.45, size=2000).astype(int), 5, 128)  # STS-B-like lengths
    tokenized = tokenized_pairs(lengths)
    steps = data.plan_batches(lengths, 64, True, 0, 0, False, group_by_length=False)
    plan = packing.plan_packing(steps, lengths, 1, 64, hidden_size=384, max_shapes=2)
    packed = [packing.pack(tokenized, s, None, plan, 0) for s in steps]
    efficiency = sum(b.real_tokens for b in packed) / sum(b.computed_tokens for b in packed)
    padded = sum(lengths[s].sum() for s in steps) / sum(len(s) * lengths[s].max() for s in steps)
    assert efficiency > 0.85 and efficiency > padded + 0.2


# ----------------------------------------------------------------------------------- packed model vs torch
@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    config = FAMILIES[request.param](3)
    pt = AutoModelForSequenceClassification.from_config(config).eval()
    directory = tmp_path_factory.mktemp(request.param)
    pt.save_pretrained(directory)
    return pt, directory


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_packed_logits_equal_pytorch_on_each_pair_alone(family_dir, scan_layers):
    pt, directory = family_dir
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory, scan_layers=scan_layers)
    model.eval()
    rng = np.random.default_rng(4)
    lengths = rng.integers(3, 30, size=22)
    tokenized = tokenized_pairs(lengths, vocab=pt.config.vocab_size, seed=5)
    if pt.config.model_type in ("roberta", "xlm-roberta", "distilbert"):
        tokenized.flat_token_type_ids[:] = 0  # single-type families
    # A pad id inside a pair's text (a literal "<pad>"): RoBERTa-style positions skip it, as transformers counts
    for example in range(0, 22, 3):
        start, end = tokenized.offsets[example], tokenized.offsets[example + 1]
        tokenized.flat_input_ids[[start + 1, end - 2]] = pt.config.pad_token_id
    indices = np.arange(22)
    plan = packing.plan_packing([indices], lengths, 2, 12, hidden_size=32, max_shapes=1, rows=3)
    batch = packing.pack(tokenized, indices, None, plan, pad_token_id=pt.config.pad_token_id)
    assert (batch.segment_ids.max(axis=-1) >= 2).any()  # some rows really hold several pairs
    logits = np.asarray(training.packed_logits(model, batch.device_fields()))
    assert logits.shape == (2 * 12, 3)
    slots = batch.indices.reshape(-1)
    for slot, example in enumerate(slots):
        if example < 0:
            continue
        ids = tokenized.input_ids[example][None].astype(np.int64)
        types = tokenized.token_type_ids[example][None].astype(np.int64)
        reference = torch_logits(pt, ids, np.ones_like(ids), types)[0]
        np.testing.assert_allclose(logits[slot], reference, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- real data
def test_stsb_packs_hf_token_ids_with_high_efficiency_in_two_shapes(minilm_dir):
    """Plain random batches of real STS-B pairs: every packed segment is exactly what the Hugging Face
    tokenizer gives for that pair alone, and packing computes >= 85% real tokens in at most two shapes
    (padding each random batch to its longest pair computes about 50%)."""
    import csv

    from conftest import shared_data
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    with open(shared_data("stsb", "stsb-en-train.csv"), newline="", encoding="utf-8") as f:
        rows = [(r[0], r[1]) for r in csv.reader(f)][:2048]
    tokenized = data.tokenize_pairs(tokenizer, [a for a, _ in rows], [b for _, b in rows], 128)
    steps = data.plan_batches(tokenized.lengths, 64, True, 0, 0, False, group_by_length=False)
    plan = packing.plan_packing(steps, tokenized.lengths, 1, 64, hidden_size=384, max_shapes=2)
    batches = [packing.pack(tokenized, s, None, plan, tokenizer.pad_token_id) for s in steps]
    assert len({b.input_ids.shape for b in batches}) <= 2
    efficiency = sum(b.real_tokens for b in batches) / sum(b.computed_tokens for b in batches)
    padded = sum(tokenized.lengths[s].sum() for s in steps) / sum(len(s) * tokenized.lengths[s].max() for s in steps)
    print(f"STS-B batch 64: packed {efficiency:.3f} real tokens ({plan.shapes}), padded per batch {padded:.3f}")
    assert efficiency >= 0.85 and padded < 0.6
    for batch in batches[:3]:
        for g, p in zip(*np.nonzero(batch.indices >= 0), strict=True):
            a, b = rows[batch.indices[g, p]]
            expected = tokenizer(a, b, truncation="longest_first", max_length=128)
            row, start, n = batch.pair_row[g, p], batch.pair_start[g, p], len(expected["input_ids"])
            assert batch.input_ids[g, row, start : start + n].tolist() == expected["input_ids"]
            assert batch.token_type_ids[g, row, start : start + n].tolist() == expected["token_type_ids"]


@pytest.mark.parametrize("groups, expected", [(1, 0.97), (4, 0.95)])
def test_token_budget_steps_take_each_pair_once_in_one_shape_almost_without_padding(minilm_dir, groups, expected):
    """Token-budget batching on the STS-B train set: each pair of the epoch lands in exactly one step, every
    step packs into the one shape (G, R, T) and >= 97% of the computed tokens are real (>= 95% with 4 groups,
    where the epoch's last, partly empty step weighs 1/41 of the run)."""
    import csv

    from conftest import shared_data
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    with open(shared_data("stsb", "stsb-en-train.csv"), newline="", encoding="utf-8") as f:
        rows = [(r[0], r[1]) for r in csv.reader(f)]
    tokenized = data.tokenize_pairs(tokenizer, [a for a, _ in rows], [b for _, b in rows], 128)
    lengths = tokenized.lengths
    rows, row_length = packing.token_budget_shape(lengths, groups, 4096)
    assert rows * row_length * groups <= 4096 and row_length >= lengths.max()
    order = np.random.default_rng(0).permutation(len(lengths))
    steps = packing.token_budget_steps(order, lengths, groups, rows, row_length)
    seen = np.concatenate([g for step in steps for g in step])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    slots = max(len(g) for step in steps for g in step)
    plan = packing.PackingPlan(rows, (row_length,), groups, slots)
    batches = [packing.pack(tokenized, np.concatenate(s), None, plan, 0, dealt=s) for s in steps]
    assert {b.input_ids.shape for b in batches} == {(groups, rows, row_length)}
    efficiency = sum(b.real_tokens for b in batches) / sum(b.computed_tokens for b in batches)
    print(f"STS-B token budget 4096 tokens, {groups} groups {plan.shapes}: {efficiency:.3f} real tokens")
    assert efficiency >= expected
    with pytest.raises(ValueError, match="more than a row"):
        packing.token_budget_steps(order, lengths, groups, 4, 16)


# ------------------------------------------------------------------------------ shapes shared across calls
def test_grid_ceiling_values_and_bound():
    assert [packing.grid_ceiling(n) for n in (1, 5, 8, 9, 10, 11, 15, 16, 17, 21, 33, 100)] == [
        1, 5, 8, 10, 10, 12, 16, 16, 20, 24, 40, 112,
    ]
    assert [packing.grid_ceiling(n, 8) for n in (1, 8, 9, 64, 65, 130)] == [8, 8, 16, 64, 80, 160]
    grid = sorted({packing.grid_ceiling(n) for n in range(1, 5000)})
    for n in range(1, 5000):
        value = packing.grid_ceiling(n)
        assert value == min(g for g in grid if g >= n)  # the smallest grid value at or above n
        assert value <= 1.25 * n
    assert len([g for g in grid if 256 < g <= 512]) == 4  # four values an octave


def rounded_up_plan(plan, lengths):
    """The plain rounding onto the grid: rows up, then the row length they need up (costs up to 56%)."""
    rows = packing.grid_ceiling(plan.rows)
    return rows, packing.grid_ceiling(packing.row_length_needed(lengths, rows), packing.ROW_QUANTUM)


def test_grid_plan_rounds_onto_the_grid_and_still_fits_every_step():
    rng = np.random.default_rng(7)
    for _ in range(20):
        lengths = rng.integers(5, 90, size=int(rng.integers(3, 40)))
        tokenized = tokenized_pairs(lengths)
        step = np.arange(len(lengths))
        plan = packing.plan_packing([step], lengths, 1, 64, hidden_size=384)
        grid = packing.grid_plan(plan, [[lengths]], 384)
        assert grid.rows == packing.grid_ceiling(grid.rows) and plan.rows // 2 <= grid.rows <= 2 * plan.rows
        assert all(t == packing.grid_ceiling(t, packing.ROW_QUANTUM) for t in grid.row_lengths)
        batch = packing.pack(tokenized, step, None, grid, 0)
        assert sorted(batch.indices[batch.indices >= 0].tolist()) == step.tolist()
        assert (grid.rows, batch.input_ids.shape[2]) in [(grid.rows, t) for t in grid.row_lengths]
        # never costlier than rounding rows and row length up one after the other
        rows, length = rounded_up_plan(plan, lengths)
        assert packing.run_cost([[lengths]], grid.rows, grid.row_lengths, 384) <= packing.run_cost(
            [[lengths]], rows, [length], 384
        )


def test_grid_plan_does_not_compound_two_roundings():
    # 128 short pairs (STS-B-like, 10-31 tokens) planned at 38 rows of 72: rounding rows up to 40 makes them
    # need 80 tokens (3,200 computed for 2,606 real); another grid row count packs them in 2,688.
    lengths = np.random.default_rng(3).integers(10, 32, size=128)
    plan = packing.PackingPlan(38, (72,), 1, 128)
    assert rounded_up_plan(plan, lengths) == (40, 80)
    grid = packing.grid_plan(plan, [[lengths]], 384)
    assert grid.rows * grid.row_lengths[0] <= 2688 < 40 * 80
    assert packing.row_length_needed(lengths, grid.rows) <= grid.row_lengths[0]
    assert packing.grid_values(3, 40) == [3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40]


def test_reuse_compiled_shapes_rents_then_buys():
    lengths = np.full(10, 20)  # 10 pairs of 20 tokens: fit 4 rows of 64 (3 a row), or 2 rows of 104
    plan = packing.PackingPlan(4, (64,), 1, 16)
    steps = [[lengths]]
    cost = packing.step_cost(4, 64, 384)
    # Nothing compiled, the plan's own shape compiled, or compiled shapes of other groups/pair slots: the plan.
    assert packing.reuse_compiled_shapes(plan, steps, [], 384) == plan
    assert packing.reuse_compiled_shapes(plan, steps, [(1, 4, 64, 16), (1, 8, 512, 16)], 384) == plan
    assert packing.reuse_compiled_shapes(plan, steps, [(2, 4, 72, 16), (1, 4, 72, 8)], 384) == plan
    # A compiled shape too small for a step is never used.
    assert packing.reuse_compiled_shapes(plan, steps, [(1, 2, 96, 16), (1, 4, 56, 16)], 384) == plan
    # Within the slack (25% more compute): always used, nothing owed.
    debts = {}
    near = packing.reuse_compiled_shapes(plan, steps, [(1, 4, 72, 16)], 384, debts)
    assert (near.rows, near.row_lengths) == (4, (72,)) and debts == {}
    # The cheapest of several fitting shapes is chosen.
    several = [(1, 4, 72, 16), (1, 4, 80, 16), (1, 8, 64, 16)]
    chosen = packing.reuse_compiled_shapes(plan, steps, several, 384)
    assert chosen.rows == 4 and chosen.row_length_for(packing.row_length_needed(lengths, 4)) == 72
    # Far bigger: rented while the extra compute stays below compiling's 8 steps, then the plan is compiled.
    big = [(1, 8, 128, 16)]
    extra = packing.step_cost(8, 128, 384) - cost
    rented = 0
    while packing.reuse_compiled_shapes(plan, steps, big, 384, debts) != plan:
        rented += 1
        assert rented < 100
    assert rented == int(np.ceil(8 * cost / extra)) - 1 and debts == {}
    # Without a memory of debts a shape costing more than compiling is never rented.
    huge = [(1, 64, 512, 16)]
    assert packing.step_cost(64, 512, 384) - cost > 8 * cost
    assert packing.reuse_compiled_shapes(plan, steps, huge, 384) == plan


def test_plan_call_takes_a_second_shape_only_when_it_pays_for_its_compile():
    def steps_of(needs_per_step):  # one pair a step: its row is as long as the pair
        return [[np.array([need])] for need in needs_per_step]

    # 16 steps needing nearly the same row: one shape (the second would save ~1% and cost a compile) ...
    near = steps_of([200] * 8 + [208] * 8)
    one = packing.plan_call(near, 1, 4, 384, max_shapes=2)
    two = packing.plan_grouped_packing(near, 1, 4, 384, max_shapes=2)
    assert len(one.row_lengths) == 1 and len(two.row_lengths) == 2
    # ... unless both shapes are compiled already: then the tightest plan.
    compiled = [(1, two.rows, t, 4) for t in two.row_lengths]
    assert packing.plan_call(near, 1, 4, 384, max_shapes=2, compiled=compiled) == two
    # 400 steps, half needing short rows and half long ones: two shapes save far more than a compile.
    bimodal = steps_of([64] * 200 + [512] * 200)
    assert len(packing.plan_call(bimodal, 1, 4, 384, max_shapes=2).row_lengths) == 2
    # Costs as priced: the chosen plan's compute plus 8 steps of each new shape is the lowest of the k-shape plans.
    for steps in (near, bimodal):
        chosen = packing.plan_call(steps, 1, 4, 384, max_shapes=3)

        def priced(plan, steps=steps):
            new = sum(packing.step_cost(plan.rows, t, 384) for t in plan.row_lengths)
            return packing.run_cost(steps, plan.rows, plan.row_lengths, 384) + 8 * new

        assert priced(chosen) == min(priced(packing.plan_grouped_packing(steps, 1, 4, 384, k)) for k in (1, 2, 3))


def test_compile_economy_prices_a_compile_in_compute_and_calls_follow_it():
    economy = packing.CompileEconomy()
    assert economy.compile_cost() is None
    economy.record(compute=3000.0, seconds=2.5, compiles=1, compile_seconds=1.0)  # 3000 units in 1.5 s
    economy.record(compute=1000.0, seconds=0.5, compiles=0, compile_seconds=0.0)  # 1000 in 0.5 s
    assert economy.compile_cost() == pytest.approx(1.0 * 4000.0 / 2.0)  # one 1 s compile = 2000 units
    rng = np.random.default_rng(5)
    call = [[rng.integers(20, 120, size=13)]]  # one query's 13 candidates
    exact = packing.plan_call(call, 1, 32, 384, 2)
    compiled = [(1, 8, 256, 32)]  # a bigger shape compiled earlier
    # Compiling costs little against the call (a measured economy): the exact plan, neither rounded nor rented.
    cheap = packing.CompileEconomy(compile_seconds=0.001, compiles=1, compute_seconds=1.0, compute=1.0)
    assert packing.plan_calls_sharing_shapes(call, 1, 32, 384, 2, compiled, cheap) == exact
    # Compiling costs more than the call (nothing measured yet: 8 steps of its shape): rounded onto the grid,
    # then the compiled shape is rented while the compute it wastes stays below a compile.
    fresh = packing.CompileEconomy()
    grid = packing.plan_calls_sharing_shapes(call, 1, 32, 384, 2, [], fresh)
    assert grid == packing.grid_plan(exact, call, 384) and grid != exact
    rented = packing.plan_calls_sharing_shapes(call, 1, 32, 384, 2, compiled, fresh)
    assert (rented.rows, rented.row_lengths) == (8, (256,)) and fresh.debts


def test_training_plans_price_a_compile_in_flops_of_the_model():
    from transformers import BertConfig, DistilBertConfig

    bert = BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)  # MiniLM's sizes
    assert packing.unit_flops(bert) == 2 * 6 * (4 * 384**2 + 2 * 384 * 1536)
    distil = DistilBertConfig(dim=768, n_layers=6, hidden_dim=3072)
    assert packing.unit_flops(distil) == 2 * 6 * (4 * 768**2 + 2 * 768 * 3072)
    price = packing.train_compile_cost(bert)
    assert price == pytest.approx(packing.TRAIN_COMPILE_FLOPS / (3 * packing.unit_flops(bert)))
    # Two micro-batches a step: each unit of a group is worth twice the time; a plan on a tenth of the steps
    # weighs the compile against a tenth of the savings.
    assert packing.train_compile_cost(bert, 2) == pytest.approx(price / 2)
    assert packing.train_compile_cost(bert, 1, 0.1) == pytest.approx(price / 10)

    # STS-B-like lengths, 16 pairs a step: a short run (24 steps) plans one shape, a long one two, and each
    # plan is the cheapest of the 1- and 2-shape plans with every shape priced at one compile.
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3.0, 0.3, 20000).astype(int), 8, 128)
    for n_steps, expected in ((24, 1), (1200, 2)):
        steps = [rng.permutation(len(lengths))[:16] for _ in range(n_steps)]
        plan = packing.plan_packing(steps, lengths, 1, 16, 384, max_shapes=2, compile_cost=price)
        assert len(plan.row_lengths) == expected
        dealt = [[lengths[g] for g in packing.deal_into_groups(s, lengths, 1)] for s in steps]

        def priced(p, dealt=dealt):
            return packing.run_cost(dealt, p.rows, p.row_lengths, 384) + price * len(p.row_lengths)

        unpriced = [packing.plan_packing(steps, lengths, 1, 16, 384, max_shapes=k) for k in (1, 2)]
        assert priced(plan) == pytest.approx(min(priced(p) for p in unpriced))
        assert plan == packing.plan_packing(steps, lengths, 1, 16, 384, max_shapes=2, compile_cost=price)


def test_a_token_budget_beyond_the_data_takes_only_the_rows_the_data_fills():
    """max_tokens_per_step far above the data set's tokens gave one step of hundreds of mostly empty rows (1.2%
    real tokens for 64 pairs in 781 x 128); the rows are now those first-fit-decreasing needs, per group."""
    lengths = np.random.default_rng(4).integers(10, 60, size=64)
    for groups in (1, 2):
        rows, row_length = packing.token_budget_shape(lengths, groups, 100_000)
        assert row_length == 128
        assert rows == -(-packing.rows_needed(lengths, 128) // groups)  # hand rule: the whole epoch, no more
        assert rows * groups * row_length < 2 * lengths.sum() + groups * row_length
        steps = packing.token_budget_steps(np.arange(64), lengths, groups, rows, row_length)
        assert sum(len(g) for step in steps for g in step) == 64
    assert packing.token_budget_shape(lengths, 1, 1024) == (8, 128)  # a budget within the data: unchanged
