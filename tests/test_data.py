"""Examples, loaders, validation, tokenization, batch planning and collation (crossjax.data)."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_data

from crossjax.data import (
    DataLoader,
    InputExample,
    collect_examples,
    plan_batches,
    tokenize_pairs,
    validate_examples,
)

INLINE_PAIRS = [
    ("A plane is taking off.", "An air plane is taking off."),
    ("A man is playing a flute.", "A man plays the flute."),
    ("Two dogs run across a large grassy field near some trees.", "Dogs running."),
    ("", "An empty first text is allowed."),
    ("Short.", "A much longer second sentence that goes on and on with many words so it gets truncated."),
]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def stsb_rows() -> list[tuple[str, str, float]]:
    with open(shared_data("stsb", "stsb-en-train.csv"), newline="", encoding="utf-8") as f:
        return [(r[0], r[1], float(r[2])) for r in csv.reader(f)]


def _examples(n: int, label=1.0) -> list[InputExample]:
    return [InputExample(texts=[f"first {i}", f"second {i}"], label=label) for i in range(n)]


# --- InputExample / DataLoader -----------------------------------------------------------------------


def test_input_example_defaults_and_repr() -> None:
    ex = InputExample(texts=["a", "b"])
    assert ex.label is None and ex.guid == ""
    ex = InputExample(texts=["a b", "c"], label=0.5, guid="g1")
    assert repr(ex) == "<InputExample> label: 0.5, texts: a b; c"
    assert str(ex) == repr(ex)
    assert ex == InputExample(texts=["a b", "c"], label=0.5, guid="g1")


def test_dataloader_basics() -> None:
    data = _examples(10)
    dl = DataLoader(data, batch_size=4, shuffle=False)
    assert (dl.dataset, dl.batch_size, dl.shuffle, dl.drop_last) == (data, 4, False, False)
    assert len(dl) == 3
    batches = list(dl)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [ex for b in batches for ex in b] == data
    dl_drop = DataLoader(data, batch_size=4, drop_last=True)
    assert len(dl_drop) == 2 and [len(b) for b in dl_drop] == [4, 4]

    shuffled = DataLoader(data, batch_size=4, shuffle=True, seed=0)
    epoch1 = [ex.texts[0] for b in shuffled for ex in b]
    epoch2 = [ex.texts[0] for b in shuffled for ex in b]
    assert sorted(epoch1) == sorted(e.texts[0] for e in data)
    assert epoch1 != epoch2  # a new order each pass
    again = DataLoader(data, batch_size=4, shuffle=True, seed=0)
    assert [ex.texts[0] for b in again for ex in b] == epoch1
    with pytest.raises(ValueError):
        DataLoader(data, batch_size=0)


# --- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,num_labels,message",
    [
        (InputExample(texts=["a", "b", "c"], label=1.0), 1, "expected exactly 2 texts, got 3"),
        (InputExample(texts=["a"], label=1.0), 1, "expected exactly 2 texts, got 1"),
        (InputExample(texts="ab", label=1.0), 1, "texts must be a list of exactly 2 strings"),
        (InputExample(texts=None, label=1.0), 1, "texts must be a list of exactly 2 strings"),
        (InputExample(texts=["a", None], label=1.0), 1, "text 1 is None"),
        (InputExample(texts=[3, "b"], label=1.0), 1, "text 0 must be a string, got int"),
        (InputExample(texts=["a", "b"]), 1, "missing label"),
        (InputExample(texts=["a", "b"], label=float("nan")), 1, "label is nan"),
        (InputExample(texts=["a", "b"], label=float("inf")), 1, "label is inf"),
        (InputExample(texts=["a", "b"], label=True), 2, "label True is a bool"),
        (InputExample(texts=["a", "b"], label=np.bool_(False)), 1, "label False is a bool"),
        (InputExample(texts=["a", "b"], label="1"), 2, "label must be a number, got str"),
        (InputExample(texts=["a", "b"], label=1.5), 3, "label 1.5 is not a class index.*use int\\(label\\)"),
        (InputExample(texts=["a", "b"], label=-1), 3, "label -1 is out of range for num_labels=3"),
        (InputExample(texts=["a", "b"], label=3), 3, "label 3 is out of range for num_labels=3"),
        (InputExample(texts=["a", "b"], label=-100), 3, "label -100 is .* \\(-100 is torch's ignore_index"),
        ({"texts": ["a", "b"], "label": 1}, 1, "expected an InputExample"),
    ],
)
def test_validation_errors_name_index_and_problem(bad, num_labels: int, message: str) -> None:
    examples = _examples(3, label=1) + [bad] + _examples(2, label=0)
    with pytest.raises(ValueError, match=f"^Example 3: {message}"):
        validate_examples(examples, num_labels=num_labels)


def test_validation_error_names_guid() -> None:
    examples = _examples(17) + [InputExample(texts=["a", "b", "c"], label=1.0, guid="x")]
    with pytest.raises(ValueError) as err:
        validate_examples(examples, num_labels=1)
    assert str(err.value) == "Example 17 (guid 'x'): expected exactly 2 texts, got 3"


def test_validation_outputs() -> None:
    examples = [
        InputExample(texts=["a", "b"], label=0.25),
        InputExample(texts=("c", "d"), label=np.float64(1.0)),
        InputExample(texts=["e", "f"], label=3),
    ]
    a, b, labels = validate_examples(examples, num_labels=1)
    assert a == ["a", "c", "e"] and b == ["b", "d", "f"]
    assert labels.dtype == np.float32 and labels.tolist() == [0.25, 1.0, 3.0]

    cls = [InputExample(texts=["a", "b"], label=v) for v in (0, 2, 1.0, np.int64(1))]
    _, _, labels = validate_examples(cls, num_labels=3)
    assert labels.dtype == np.int32 and labels.tolist() == [0, 2, 1, 1]

    _, _, labels = validate_examples([InputExample(texts=["a", "b"])], num_labels=1, require_labels=False)
    assert labels.tolist() == [0.0]


# --- collect_examples --------------------------------------------------------------------------------


def test_collect_from_our_dataloader() -> None:
    data = _examples(5)
    assert collect_examples(DataLoader(data, batch_size=2, shuffle=True, drop_last=True)) == (
        data,
        2,
        True,
        True,
        None,
    )
    assert collect_examples(DataLoader(data, batch_size=2, shuffle=True, seed=5)).seed == 5
    assert collect_examples(DataLoader(data, batch_size=2), batch_size=4, shuffle=True) == (
        data,
        4,
        True,
        False,
        None,
    )


def test_collect_from_torch_dataloader() -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    data = _examples(20)
    # As sentence-transformers users write it: no collate_fn (we never iterate it).
    assert collect_examples(torch_data.DataLoader(data, shuffle=True, batch_size=8)) == (data, 8, True, False, None)
    assert collect_examples(torch_data.DataLoader(data, batch_size=4, drop_last=True)) == (
        data,
        4,
        False,
        True,
        None,
    )
    import torch

    seeded = torch_data.DataLoader(data, shuffle=True, batch_size=8, generator=torch.Generator().manual_seed(11))
    assert collect_examples(seeded).seed == 11


def test_collect_from_hf_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"idx": [0, 1], "sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [0.1, 0.9]}
    )
    examples, bs, shuffle, drop_last, _ = collect_examples(ds)
    assert (bs, shuffle, drop_last) == (16, True, False)
    assert [(e.texts, e.label) for e in examples] == [(["a", "c"], 0.1), (["b", "d"], 0.9)]

    ds = datasets.Dataset.from_dict({"label": [1, 0], "anchor": ["a", "b"], "other": ["c", "d"], "x": [1, 2]})
    examples, bs, shuffle, _, _ = collect_examples(ds, batch_size=8, shuffle=False)
    assert (bs, shuffle) == (8, False)
    assert [(e.texts, e.label) for e in examples] == [(["a", "c"], 1), (["b", "d"], 0)]

    ds = datasets.Dataset.from_dict({"query": ["q"], "document": ["d"]})  # no label column
    (ex,), *_ = collect_examples(ds)
    assert ex.texts == ["q", "d"] and ex.label is None
    with pytest.raises(ValueError, match="missing label"):
        validate_examples([ex], num_labels=1)
    with pytest.raises(ValueError, match="two text columns"):
        collect_examples(datasets.Dataset.from_dict({"text": ["a"], "label": [1]}))
    with pytest.raises(TypeError, match="DatasetDict"):
        collect_examples(datasets.DatasetDict({"train": ds}))
    with pytest.raises(TypeError, match=r"IterableDatasetDict with splits \['train'\]; pass one split"):
        collect_examples(datasets.IterableDatasetDict({"train": ds.to_iterable_dataset()}))
    # sentence-transformers' trainer's label column names, "scores" among them
    ds = datasets.Dataset.from_dict({"query": ["q", "r"], "document": ["d", "e"], "scores": [0.25, 1.0]})
    assert [e.label for e in collect_examples(ds).examples] == [0.25, 1.0]


def test_collect_from_iterables() -> None:
    data = _examples(7)
    batches = [data[:3], data[3:6], data[6:]]
    assert collect_examples(batches) == (data, 3, False, False, None)
    assert collect_examples(iter(batches)) == (data, 3, False, False, None)
    assert collect_examples(data) == (data, 16, False, False, None)  # a flat list of examples


def test_collect_empty() -> None:
    for empty in ([], DataLoader([]), iter([])):
        with pytest.raises(ValueError, match="is empty"):
            collect_examples(empty)
    datasets = pytest.importorskip("datasets")
    with pytest.raises(ValueError, match="is empty"):
        collect_examples(datasets.Dataset.from_dict({"sentence1": [], "sentence2": [], "label": []}))
    with pytest.raises(TypeError):
        collect_examples(42)


# --- tokenization ------------------------------------------------------------------------------------


def _check_tokenization(tokenizer, pairs, max_length: int, chunk_size: int) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    tok = tokenize_pairs(tokenizer, a, b, max_length, chunk_size=chunk_size)
    assert len(tok) == len(pairs) and tok.lengths.dtype == np.int32
    for i, (x, y) in enumerate(pairs):
        ref = tokenizer(x, y, truncation="longest_first", max_length=max_length)
        assert tok.input_ids[i].tolist() == ref["input_ids"]
        assert tok.token_type_ids[i].tolist() == ref["token_type_ids"]
        assert tok.lengths[i] == len(ref["input_ids"])
    assert tok.input_ids[i].dtype == np.int32


def test_tokenize_inline_pairs(tokenizer) -> None:
    _check_tokenization(tokenizer, INLINE_PAIRS, max_length=16, chunk_size=2)
    empty = tokenize_pairs(tokenizer, [], [], 16)
    assert len(empty) == 0 and empty.offsets.tolist() == [0]


def test_tokenize_stsb_pairs(tokenizer, stsb_rows) -> None:
    pairs = [(r[0], r[1]) for r in stsb_rows[:200]]
    _check_tokenization(tokenizer, pairs, max_length=24, chunk_size=64)  # 24 forces some truncation
    assert max(len(tokenizer(x, y)["input_ids"]) for x, y in pairs) > 24


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["wordpiece", "byte-level BPE", "unigram"])
def test_pairs_of_long_texts_tokenize_as_the_tokenizer_does_without_its_windows(kind, side, tokenizer, stsb_rows,
                                                                                  tmp_path) -> None:  # fmt: skip
    """Pairs whose texts are both long are cut before the tokenizer sees them (its longest_first truncation
    builds the product of both texts' overflow windows: seconds and gigabytes a pair); the ids and token types
    equal the tokenizer's own for the whole texts, for each kind of tokenizer and truncation side, on texts with
    and without whitespace near the cut."""
    from crossjax.data import LONG_TEXT_CHARS_PER_TOKEN, _spare_pair_windows

    if kind == "byte-level BPE":
        from test_fit_parity import byte_level_tokenizer

        tok = byte_level_tokenizer([r[0] for r in stsb_rows[:2000]], tmp_path)
    elif kind == "unigram":
        from test_deberta_v2 import deberta_tokenizer

        tok = deberta_tokenizer()
    else:
        tok = tokenizer
    tok.truncation_side = side
    rng = np.random.default_rng(7)
    no_spaces = "数据集中的长文本没有空格" * 9
    sentences = [r[0] for r in stsb_rows[:400]] + [no_spaces, "emoji 🙂🙂🙂 and naïve café", "x" * 150]

    def text(words: int) -> str:
        return " ".join(rng.choice(sentences, size=words))

    same = text(25)
    pairs = [(text(int(rng.integers(12, 40))), text(int(rng.integers(12, 40)))) for _ in range(28)]
    pairs += [(text(30), "short second text"), ("", text(30)), (sentences[-3], sentences[-3] * 2), (same, same)]
    pairs += [(same, same + " a"), (same + " a", same)]  # one token apart: the odd budget's split follows it
    pairs += [(no_spaces * 3, no_spaces * 4), ("🙂" * 300, "ab" * 300)]  # no whitespace: cut at a token's edge
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    for max_length in (20, 33):  # odd and even budgets for the texts
        cut_a, cut_b = _spare_pair_windows(tok, a, b, max_length)
        long = [len(x) > LONG_TEXT_CHARS_PER_TOKEN * max_length and len(y) > LONG_TEXT_CHARS_PER_TOKEN * max_length
                for x, y in pairs]  # fmt: skip
        assert sum(long) >= 20 and sum(len(x) < len(y) for x, y in zip(cut_a + cut_b, a + b, strict=True)) >= 20
        tokenized = tokenize_pairs(tok, a, b, max_length, chunk_size=10)
        reference = tok(a, b, truncation="longest_first", max_length=max_length)
        types = reference.get("token_type_ids") or [[0] * len(ids) for ids in reference["input_ids"]]
        for i in range(len(pairs)):
            assert tokenized.input_ids[i].tolist() == reference["input_ids"][i], (i, max_length)
            assert tokenized.token_type_ids[i].tolist() == types[i], (i, max_length)


def test_tokenizing_many_chunks_shows_progress_and_the_same_tokens(tokenizer, stsb_rows, capsys) -> None:
    """A fit of a big in-memory set tokenizes it before its first step: a bar says so (for more than two
    chunks), and the tokens are those of an unbarred run."""
    pairs = [(r[0], r[1]) for r in stsb_rows[:50]]
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    quiet = tokenize_pairs(tokenizer, a, b, 24, chunk_size=16)
    assert "Tokenizing" not in capsys.readouterr().err
    barred = tokenize_pairs(tokenizer, a, b, 24, chunk_size=16, progress=True)  # 4 chunks
    assert "Tokenizing" in capsys.readouterr().err
    tokenize_pairs(tokenizer, a[:32], b[:32], 24, chunk_size=16, progress=True)  # 2 chunks: no bar
    assert "Tokenizing" not in capsys.readouterr().err
    for field in ("flat_input_ids", "flat_token_type_ids", "offsets", "lengths"):
        np.testing.assert_array_equal(getattr(barred, field), getattr(quiet, field))


# --- batch plans -------------------------------------------------------------------------------------


def _check_plan(batches: list[np.ndarray], n: int, batch_size: int, drop_last: bool) -> None:
    sizes = [len(b) for b in batches]
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    seen = np.concatenate(batches)
    if drop_last:
        assert sizes[-1] == batch_size and len(seen) == (n // batch_size) * batch_size
        assert len(np.unique(seen)) == len(seen)
    else:
        assert sorted(seen.tolist()) == list(range(n))


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_plan_batches_shuffled(group: bool, drop_last: bool) -> None:
    lengths = np.random.default_rng(0).integers(5, 120, size=1003)
    kw = dict(
        batch_size=16, shuffle=True, seed=3, drop_last=drop_last, group_by_length=group, megabatch_mult=8
    )
    e0 = plan_batches(lengths, epoch=0, **kw)
    _check_plan(e0, 1003, 16, drop_last)
    assert [b.tolist() for b in plan_batches(lengths, epoch=0, **kw)] == [b.tolist() for b in e0]
    e1 = plan_batches(lengths, epoch=1, **kw)
    _check_plan(e1, 1003, 16, drop_last)
    assert [b.tolist() for b in e1] != [b.tolist() for b in e0]
    other_seed = plan_batches(lengths, epoch=0, **{**kw, "seed": 4})
    assert [b.tolist() for b in other_seed] != [b.tolist() for b in e0]


def test_plan_batches_sequential_matches_plain_order() -> None:
    lengths = np.arange(10)
    batches = plan_batches(lengths, 4, shuffle=False, seed=0, epoch=5, drop_last=False)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    batches = plan_batches(lengths, 4, shuffle=False, seed=0, epoch=0, drop_last=True)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan_batches(np.zeros(0), 4, shuffle=True, seed=0, epoch=0, drop_last=False) == []


def test_import_does_not_pull_torch_or_jax() -> None:
    code = "import sys, crossjax.data; print(sorted(m for m in ('torch', 'jax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dataset_columns_are_read_whole_and_equal_row_by_row_reads():
    """``column_values`` reads a ``datasets`` column at once; it equals reading it row by row, also through
    an indices mapping (shuffle, select) and a numpy format, and for a dict of columns."""
    import datasets

    from crossjax.data import column_values

    ds = datasets.Dataset.from_dict({"q": [f"q{i}" for i in range(50)], "label": [i % 3 / 2 for i in range(50)]})
    for view in (ds, ds.shuffle(seed=4).select(range(0, 50, 3)), ds.with_format("numpy")):
        for name in ("q", "label"):
            assert column_values(view, name) == [view[i][name] for i in range(len(view))]
    assert column_values({"q": ("a", "b")}, "q") == ["a", "b"]


def test_the_loss_s_ignore_index_is_kept_and_another_one_named() -> None:
    """fit's cross-entropy leaves out the rows labelled its ignore_index (torch's -100 unless set): they pass the
    checks as is; -100 under a cross-entropy that ignores another label is refused naming that label."""
    examples = _examples(2, label=1) + [InputExample(texts=["a", "b"], label=-1)]
    assert validate_examples(examples, num_labels=3, ignored_label=-1)[2].tolist() == [1, 1, -1]
    examples[2] = InputExample(texts=["a", "b"], label=-100)
    with pytest.raises(ValueError, match=r"label -100 is .* \(this run's cross-entropy leaves out label -1, its"):
        validate_examples(examples, num_labels=3, ignored_label=-1)
