"""Streaming input (issue 8): ``fit`` over generators and ``datasets.IterableDataset`` with ``max_steps``.

Each stream run is checked against the in-memory path on the same examples (same order, shuffle off), which
is the independent reference: the two share the train step but not the data pipeline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_fit_behaviour import (  # noqa: F401 - fixtures used by name
    TRAIN,
    losses_of,
    make_examples,
    params_of,
    tiny_dir,
    tiny_dirs,
)

from crossjax import CrossEncoder, InputExample

FIXTURES = (tiny_dir, tiny_dirs)  # imported for pytest, which finds them by name
RUN = {**TRAIN, "logging_steps": 1, "batch_size": 4}


def assert_same_params(a: CrossEncoder, b: CrossEncoder) -> None:
    for x, y in zip(params_of(a), params_of(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_generator_matches_list(tiny_dir):
    examples = make_examples(40, seed=1)
    in_memory, streamed = CrossEncoder(tiny_dir), CrossEncoder(tiny_dir)
    in_memory.fit(list(examples), **RUN)
    summary = streamed.fit((ex for ex in examples), max_steps=10, **RUN)
    assert summary["global_step"] == 10 and summary["stream_examples"] == 40
    assert losses_of(streamed) == losses_of(in_memory)
    assert len(losses_of(streamed)) == 10
    assert_same_params(in_memory, streamed)


def test_a_stream_keeps_the_rows_cross_entropy_ignores(tiny_dirs):
    """Rows labelled -100 (torch's ignore_index, which fit's cross-entropy skips) pass a stream's checks as they
    pass the in-memory ones: the same losses and parameters."""
    examples = make_examples(24, seed=3)
    for i, example in enumerate(examples):
        example.label = -100 if i % 4 == 1 else i % 3
    in_memory, streamed = CrossEncoder(tiny_dirs[3]), CrossEncoder(tiny_dirs[3])
    in_memory.fit(list(examples), **RUN)
    streamed.fit(iter(examples), max_steps=6, **RUN)
    assert len(losses_of(streamed)) == 6 and losses_of(streamed) == losses_of(in_memory)
    assert_same_params(in_memory, streamed)


@pytest.mark.parametrize(
    "max_steps, extra",
    [(100, {}), (6, {"gradient_accumulation_steps": 2})],
    ids=["stream ends before max_steps", "gradient accumulation"],
)
def test_generator_matches_list_variants(tiny_dir, max_steps, extra):
    examples = make_examples(42, seed=5)  # 10 full batches of 4 and a partial one
    in_memory, streamed = CrossEncoder(tiny_dir), CrossEncoder(tiny_dir)
    in_memory.fit(list(examples), **RUN, **extra)
    summary = streamed.fit(iter(examples), max_steps=max_steps, **RUN, **extra)
    assert summary["stream_examples"] == 42
    assert len(losses_of(streamed)) == min(max_steps, 11)
    assert losses_of(streamed) == losses_of(in_memory)
    assert_same_params(in_memory, streamed)


def test_jsonl_stream_matches_in_memory_dataset(tiny_dir, tmp_path):
    import datasets
    import torch

    examples = make_examples(24, seed=2)
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps({"sentence1": ex.texts[0], "sentence2": ex.texts[1], "label": ex.label}) + "\n")
    stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    in_memory_ds = datasets.load_dataset("json", data_files=str(path), split="train")
    in_memory, streamed = CrossEncoder(tiny_dir), CrossEncoder(tiny_dir)
    in_memory.fit(torch.utils.data.DataLoader(in_memory_ds, batch_size=4), **{**RUN, "batch_size": None})
    streamed.fit(stream, max_steps=6, **RUN)
    assert losses_of(streamed) == losses_of(in_memory)
    assert_same_params(in_memory, streamed)
    # the model card shows the stream's first rows, as it shows the dataset's
    card_rows = [m.model_card_data.training.datasets[0].samples for m in (streamed, in_memory)]
    assert card_rows[0] == card_rows[1] and len(card_rows[0]) == 3
    # a torch DataLoader over the stream: its batch size is used, it is never iterated
    via_loader = CrossEncoder(tiny_dir)
    summary = via_loader.fit(
        torch.utils.data.DataLoader(stream, batch_size=4), max_steps=6, **{**RUN, "batch_size": None}
    )
    assert summary["stream_examples"] == 24
    assert_same_params(in_memory, via_loader)


def test_a_text_column_beside_the_pair_is_refused_not_trained_on(tiny_dir, tmp_path, spies):
    """An id column beside unnamed pair columns: fit refused it as sentence-transformers' trainer refuses three
    input columns (it trained on (id, query) before); a stream with a mixed-type column is named by row in the
    trainer (pyarrow's error came from reading it into memory)."""
    import datasets

    from crossjax import CrossEncoderTrainer, CrossEncoderTrainingArguments

    path = tmp_path / "rows.jsonl"
    rows = [{"id": f"q{i}", "query": e.texts[0], "doc": e.texts[1], "label": e.label} for i, e in
            enumerate(make_examples(8, seed=4))]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for streaming in (True, False):
        ds = datasets.load_dataset("json", data_files=str(path), split="train", streaming=streaming)
        with pytest.raises(ValueError, match=r"3 text columns \['id', 'query', 'doc'\].*ambiguous"):
            CrossEncoder(tiny_dir).fit(ds, max_steps=1, **RUN)
    assert spies == []
    rows[2]["doc"] = 5
    path.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "id"}) + "\n" for row in rows))
    stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    args = CrossEncoderTrainingArguments(str(tmp_path / "run"), max_steps=1, disable_tqdm=True)
    with pytest.raises((TypeError, ValueError), match="row 2.*int 5"):
        CrossEncoderTrainer(model=CrossEncoder(tiny_dir), args=args, train_dataset=stream).train()


def test_stream_errors(tiny_dir):
    ce = CrossEncoder(tiny_dir)
    with pytest.raises(ValueError, match="max_steps"):
        ce.fit((ex for ex in make_examples(8)), **RUN)
    examples = make_examples(200, seed=3)
    examples[137] = InputExample(texts=["a", None], label=1.0)
    with pytest.raises(ValueError, match="Example 137: text 1 is None"):
        ce.fit((ex for ex in examples), max_steps=50, **RUN)  # 137 is past the planning lookahead (128)
    # raised before step 35, which holds it: steps 1..34 trained (the history is flushed every step)
    assert [h["step"] for h in ce.training_history] == list(range(1, 35))


def test_max_steps_caps_in_memory_run(tiny_dir):
    summary = CrossEncoder(tiny_dir).fit(make_examples(40), max_steps=3, **RUN)
    assert summary["global_step"] == 3


@pytest.mark.parametrize("shuffle_buffer_size", [0, 10])
def test_stream_resume_is_exact(tiny_dir, tmp_path, shuffle_buffer_size):
    examples = make_examples(60, seed=4)
    run = {**RUN, "max_steps": 6, "shuffle_buffer_size": shuffle_buffer_size}
    straight = CrossEncoder(tiny_dir)
    straight.fit(iter(examples), **run)

    calls = []

    def evaluator(model, output_path=None, epoch=-1, steps=-1):
        calls.append(steps)
        if steps == 5 and len(calls) == 5:  # the first run dies after step 5, past the checkpoint at step 4
            raise RuntimeError("preempted")
        return 0.0

    checkpoints = {"checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 2}
    interrupted = CrossEncoder(tiny_dir)
    with pytest.raises(RuntimeError, match="preempted"):
        interrupted.fit(iter(examples), evaluator=evaluator, evaluation_steps=1, **checkpoints, **run)
    resumed = CrossEncoder(tiny_dir)
    summary = resumed.fit(iter(examples), evaluator=evaluator, evaluation_steps=1, **checkpoints, **run)
    assert summary["resumed_from_step"] == 4 and summary["global_step"] == 6
    assert summary["stream_examples"] == 24
    assert losses_of(resumed) == losses_of(straight)[4:]
    assert_same_params(straight, resumed)


def test_large_generator_is_not_materialized(tiny_dir):
    import psutil

    read = [0]

    def pairs(n):
        rng = np.random.default_rng(0)
        words = np.array("a man dog plays guitar in the park red ball runs".split())
        for i in range(n):
            read[0] += 1
            yield InputExample(texts=[" ".join(rng.choice(words, 5)), " ".join(rng.choice(words, 3))], label=i % 2)

    ce = CrossEncoder(tiny_dir)
    ce.fit(pairs(1000), max_steps=10, **{**RUN, "batch_size": 16})  # warm-up: compile the shapes
    process = psutil.Process()
    before = process.memory_info().rss
    read[0] = 0
    summary = ce.fit(pairs(200_000), max_steps=10, **{**RUN, "batch_size": 16})
    grown = process.memory_info().rss - before
    assert summary["global_step"] == 10 and summary["stream_examples"] == 160
    assert read[0] == 160, "the stream must be read only as far as training needs it"
    assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"


def _chunk(lengths: list[int], first_label: int) -> object:
    """A tokenized chunk of pairs of the given token counts, labelled first_label, first_label + 1, ..."""
    from crossjax import streaming
    from crossjax.data import TokenizedPairs

    lengths_ = np.asarray(lengths, np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths_)]).astype(np.int64)
    flat = np.arange(int(offsets[-1]), dtype=np.int32)
    tokenized = TokenizedPairs(flat, np.zeros_like(flat), offsets, lengths_, 64)
    return streaming.StreamStep(tokenized, np.arange(first_label, first_label + len(lengths), dtype=np.float32), 0)


def test_multi_host_deferral_keeps_the_shape_and_defers_the_suffix():
    """One group of 4 pair slots in 2 rows of 16 tokens: a step whose examples do not fit trains the longest
    prefix that does and its next step starts with the deferred suffix, in stream order."""
    from crossjax import packing, streaming

    plan = packing.PackingPlan(rows=2, row_lengths=(16,), groups=1, pairs=4)

    def fitting(lengths):
        return packing.fitting_prefix(lengths, plan.groups, plan.pairs, plan.rows, 16)

    assert fitting(np.array([8, 8, 8, 8])) == 4
    assert fitting(np.array([8, 8, 12, 4])) == 4  # 12+4 | 8+8: exactly full
    assert fitting(np.array([8, 12, 12, 4])) == 2  # 12 | 12: the 8 fits in neither row
    assert fitting(np.array([20, 1])) == 0
    chunks = iter([_chunk([8, 8, 12, 8], 0), _chunk([12, 12, 4, 4], 4), _chunk([2], 8)])
    steps = list(streaming.deferring_steps(chunks, 4, fitting))
    trained = [step.labels[: step.fitting].tolist() for step in steps]
    assert trained == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert steps[1].labels.tolist() == [3, 4, 5, 6]  # the deferred suffix leads the next step
    for step in steps:  # the trained prefix packs into the agreed shape, tokens intact
        indices = np.arange(step.fitting)
        batch = packing.pack(step.tokenized, indices, step.labels, plan, pad_token_id=0)
        assert batch.input_ids.shape == (1, 2, 16)
        for slot in np.flatnonzero(batch.indices[0] >= 0):
            ids = step.tokenized.input_ids[int(batch.indices[0, slot])]
            row, start = batch.pair_row[0, slot], batch.pair_start[0, slot]
            np.testing.assert_array_equal(batch.input_ids[0, row, start : start + len(ids)], ids)
    with pytest.raises(ValueError, match="example 1 of this process's shard of the stream has 20 tokens"):
        list(streaming.deferring_steps(iter([_chunk([8, 20], 0)]), 4, fitting))


def test_multi_host_plan_rows_hold_any_pair_up_to_max_length():
    """The one multi-host shape has rows of at least max_length tokens: a pair longer than every planning
    pair still fits, and the planning steps fit the row count chosen at that length."""
    from crossjax import packing, streaming

    planning = [_chunk([10, 12, 9, 11], 0), _chunk([8, 14, 10, 10], 4)]
    short = streaming.plan_from_steps(planning, groups=2, pairs=2, hidden_size=32, max_shapes=1)
    assert short.row_lengths[-1] < 60  # planned from short pairs alone, a 60-token pair would not fit
    plan = streaming.plan_from_steps(planning, groups=2, pairs=2, hidden_size=32, max_shapes=1, min_row_length=60)
    assert plan.row_lengths == (64,) and plan.rows == 1  # 60 rounded up to 8; 2 pairs of <= 14 fit one row
    assert packing.fitting_prefix(np.array([60, 10, 9, 12]), 2, 2, plan.rows, 64) == 3  # the 9 is deferred
    assert packing.rows_needed(np.array([40, 20, 30, 10]), 64) == 2  # 40+20 | 30+10
    assert packing.rows_needed(np.array([40, 40, 30]), 64) == 3
    with pytest.raises(ValueError, match="does not fit a row"):
        packing.rows_needed(np.array([70]), 64)


def test_stream_refuses_in_memory_settings_and_resumes_only_its_own_layout(tiny_dir, tmp_path):
    ce = CrossEncoder(tiny_dir)
    for setting in ({"max_tokens_per_step": 256}, {"group_by_length": True}):
        with pytest.raises(ValueError, match="needs the whole training set in memory"):
            ce.fit((ex for ex in make_examples(8)), max_steps=2, **{**RUN, **setting})
    from crossjax.checkpoint import CheckpointMismatchError

    examples = make_examples(24, seed=6)
    checkpoints = {"checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 2, "max_steps": 2}
    CrossEncoder(tiny_dir, max_length=64).fit(iter(examples), **checkpoints, **RUN)
    # Another truncation or another dealing of a step's examples is another run, as for in-memory data.
    with pytest.raises(CheckpointMismatchError, match="max_length"):
        CrossEncoder(tiny_dir, max_length=16).fit(iter(examples), **checkpoints, **RUN)
    with pytest.raises(CheckpointMismatchError, match="groups"):
        CrossEncoder(tiny_dir, max_length=64).fit(iter(examples), gradient_accumulation_steps=2,
                                                  **checkpoints, **{**RUN, "batch_size": 2})  # fmt: skip


def test_stream_steps_past_the_plan_share_a_few_row_lengths():
    """Steps the planning lookahead did not see, each needing a longer row than planned, are put on a coarse
    grid of row lengths: a handful of programs, not one per new length."""
    from crossjax import packing

    plan = packing.PackingPlan(2, (32,), 1, 4)
    lengths = {plan.row_length_for(needed) for needed in range(33, 513)}
    assert plan.row_length_for(20) == 32  # a planned length still serves what it fits
    assert len(lengths) == 16  # 480 needs: every 8 tokens up to 64, then four lengths an octave, not 60
    assert all(n <= plan.row_length_for(n) <= 1.25 * n + packing.ROW_QUANTUM for n in range(33, 513))


def test_resuming_on_a_stream_with_nothing_past_the_checkpoint_position_says_so(tiny_dir, tmp_path, caplog):
    examples = make_examples(24, seed=7)
    checkpoints = {"checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 2, "max_steps": 4}
    CrossEncoder(tiny_dir).fit(iter(examples[:8]), **checkpoints, **RUN)  # ends after 2 steps of 4: position 8
    with caplog.at_level("WARNING", logger="crossjax"):
        summary = CrossEncoder(tiny_dir).fit(iter(examples[:6]), **checkpoints, **RUN)
    assert summary["global_step"] == 2
    assert "no examples past the data position of the checkpoint it resumes (8 examples" in caplog.text


def test_a_stream_checkpoint_refuses_another_file_with_the_same_columns(tiny_dir, tmp_path):
    import datasets

    from crossjax import streaming
    from crossjax.checkpoint import CheckpointMismatchError

    def jsonl(name: str, seed: int):
        path = tmp_path / name
        rows = (json.dumps({"a": e.texts[0], "b": e.texts[1], "label": e.label}) for e in make_examples(16, seed=seed))
        path.write_text("\n".join(rows) + "\n")
        return datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)

    first = jsonl("first.jsonl", 1)
    assert streaming.data_file_names(first) == ["first.jsonl"]
    assert streaming.data_file_names(first.shuffle(seed=0, buffer_size=4).skip(2)) == ["first.jsonl"]
    assert streaming.data_file_names(iter([])) is None
    checkpoints = {"checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 1, "max_steps": 2}
    CrossEncoder(tiny_dir).fit(first, **checkpoints, **RUN)
    with pytest.raises(CheckpointMismatchError, match=r"stream_files: checkpoint \['first.jsonl'\] vs now \['other"):
        CrossEncoder(tiny_dir).fit(jsonl("other.jsonl", 2), **checkpoints, **RUN)


def test_streams_of_batches_keep_their_batches_and_resume_by_examples(tiny_dir, tmp_path):
    """A generator of batches trains its batches (a list of the same batches is the oracle: batch size from the
    first), and a resume skips the checkpoint's examples, not as many batches."""
    examples = make_examples(48, seed=7)
    batches = [examples[i : i + 4] for i in range(0, 48, 4)]
    run = {**RUN, "batch_size": None, "max_steps": 6}
    in_memory, straight = CrossEncoder(tiny_dir), CrossEncoder(tiny_dir)
    in_memory.fit(list(batches), **run)
    straight.fit(iter(batches), **run)
    assert losses_of(straight) == losses_of(in_memory) and len(losses_of(straight)) == 6

    def stop_after_step_3(score, epoch, steps):
        if steps == 3:
            raise KeyboardInterrupt("preempted")

    checkpoints = {"checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 2}
    with pytest.raises(KeyboardInterrupt):
        CrossEncoder(tiny_dir).fit(
            iter(batches), evaluator=lambda *a, **k: 0.0, evaluation_steps=1, callback=stop_after_step_3,
            **checkpoints, **run,
        )  # fmt: skip
    resumed = CrossEncoder(tiny_dir)
    summary = resumed.fit(iter(batches), **checkpoints, **run)
    assert summary["resumed_from_step"] == 2 and summary["stream_examples"] == 24
    assert losses_of(resumed) == losses_of(straight)[2:]
    assert_same_params(straight, resumed)


def test_torch_iterable_datasets_stream_and_a_loaders_drop_last_holds(tiny_dir):
    import torch

    examples = make_examples(26, seed=8)

    class Pairs(torch.utils.data.IterableDataset):
        reads = 0

        def __iter__(self):
            for ex in examples:
                type(self).reads += 1
                yield ex

    # drop_last: torch's own iteration of the loader is the oracle (6 batches of 4, the last 2 pairs dropped)
    loader = torch.utils.data.DataLoader(Pairs(), batch_size=4, drop_last=True, collate_fn=list)
    assert [len(b) for b in loader] == [4] * 6
    in_memory, streamed = CrossEncoder(tiny_dir), CrossEncoder(tiny_dir)
    in_memory.fit(list(examples[:24]), **RUN)
    summary = streamed.fit(loader, max_steps=100, **{**RUN, "batch_size": None})
    assert summary["global_step"] == 6 and summary["stream_examples"] == 24
    assert_same_params(in_memory, streamed)
    # drop_last drops the run's last partial step (fit's batch_size 8 here), as for the same loader over a list
    fourteen = examples[:14]
    in_memory, streamed = CrossEncoder(tiny_dir), CrossEncoder(tiny_dir)
    in_memory.fit(
        torch.utils.data.DataLoader(fourteen, batch_size=4, drop_last=True, collate_fn=list), **{**RUN, "batch_size": 8}
    )
    Pairs.reads, examples[:] = 0, fourteen
    summary = streamed.fit(loader, max_steps=100, **{**RUN, "batch_size": 8})
    assert summary["global_step"] == len(losses_of(in_memory)) == 1 and summary["stream_examples"] == 8
    assert_same_params(in_memory, streamed)
    # with accumulation a step is 2 of the loader's batches: drop_last drops its last partial batch only (8 + 4)
    accumulated = {**RUN, "gradient_accumulation_steps": 2}
    in_memory, streamed = CrossEncoder(tiny_dir), CrossEncoder(tiny_dir)
    in_memory.fit(torch.utils.data.DataLoader(fourteen, batch_size=4, drop_last=True, collate_fn=list), **accumulated)
    Pairs.reads = 0
    summary = streamed.fit(loader, max_steps=100, **accumulated)
    assert summary["global_step"] == len(losses_of(in_memory)) == 2 and summary["stream_examples"] == 12
    np.testing.assert_allclose(losses_of(streamed), losses_of(in_memory), rtol=1e-6)
    # a bare torch IterableDataset is a stream too: max_steps reads what it needs, not the whole dataset
    Pairs.reads = 0
    summary = CrossEncoder(tiny_dir).fit(Pairs(), max_steps=2, **RUN)
    assert summary["stream_examples"] == 8 and Pairs.reads < 26
    # a one-shot dataset (its iterator is itself): probing its first item for a batch size must not lose it
    class OneShot(torch.utils.data.IterableDataset):
        def __init__(self, items):
            self.items = iter(items)

        def __iter__(self):
            return self.items

    for source in (OneShot(fourteen), torch.utils.data.DataLoader(OneShot(fourteen), batch_size=None)):
        summary = CrossEncoder(tiny_dir).fit(source, max_steps=100, **{**RUN, "batch_size": None})
        assert summary["stream_examples"] == 14, type(source)
    # a stream whose only step drop_last drops: named as such, as for a list (not "holds no examples")
    examples[:] = fourteen[:3]
    with pytest.raises(ValueError, match=r"no full batch of 8 examples with drop_last=True: .* holds 3 only"):
        CrossEncoder(tiny_dir).fit(loader, max_steps=100, **{**RUN, "batch_size": 8})


def test_a_streams_text_columns_come_from_its_schema_and_in_memory_refuses_a_shuffle_buffer(tiny_dir, tmp_path):
    import datasets

    path = tmp_path / "pairs.jsonl"
    # the first row's "a" is None: read from the values, that row would hold one text column only
    rows = [{"a": None, "b": "x y", "label": 1.0}, {"a": "z", "b": "w", "label": 0.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    in_memory = datasets.load_dataset("json", data_files=str(path), split="train")
    stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    with pytest.raises(ValueError, match="Example 0: text 0 is None"):
        CrossEncoder(tiny_dir).fit(in_memory, **RUN)
    with pytest.raises(ValueError, match="Example 0: text 0 is None"):  # not "could not find two text columns"
        CrossEncoder(tiny_dir).fit(stream, max_steps=2, **RUN)
    with pytest.raises(ValueError, match="shuffle_buffer_size=8 applies to streams"):
        CrossEncoder(tiny_dir).fit(make_examples(8), shuffle_buffer_size=8, **RUN)
