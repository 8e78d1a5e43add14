"""crossjax's fit against sentence-transformers' legacy fit (``old_fit``), the oracle, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import read_stsb

from crossjax import CrossEncoder, DataLoader, InputExample

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


class RecordingBCE(torch.nn.BCEWithLogitsLoss):
    """BCEWithLogitsLoss that remembers each step's loss (old_fit keeps none)."""

    def __init__(self):
        super().__init__()
        self.history: list[float] = []

    def forward(self, logits, labels):
        loss = super().forward(logits, labels)
        self.history.append(float(loss.detach()))
        return loss


def fit_both(directory, rows, settings: dict, batch_size: int = 8, no_dropout: dict = NO_DROPOUT, **ours_kwargs):
    """``fit`` (crossjax) and ``old_fit`` (sentence-transformers) from the checkpoint in ``directory`` on STS-B
    ``rows`` (labels score / 5), sequential batches, dropout off (``no_dropout``: the family's config keys):
    (ours, theirs, old_fit's per-step losses)."""
    from sentence_transformers import CrossEncoder as TorchCrossEncoder
    from sentence_transformers import InputExample as TorchInputExample

    ours = CrossEncoder(directory, config_kwargs=no_dropout, **ours_kwargs)
    examples = [InputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows]
    ours.fit(DataLoader(examples, batch_size=batch_size, shuffle=False), **settings)
    torch.manual_seed(0)
    theirs = TorchCrossEncoder(str(directory), device="cpu", config_kwargs=no_dropout)
    recorder = RecordingBCE()
    torch_examples = [TorchInputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows]
    loader = torch.utils.data.DataLoader(torch_examples, batch_size=batch_size, shuffle=False)
    theirs.old_fit(loader, loss_fct=recorder, **settings)
    return ours, theirs, recorder.history


# Two steps of old_fit's schedule (warm-up then linear decay), weight decay and clipping: the families' tests.
TWO_STEPS = dict(
    epochs=1,
    scheduler="WarmupLinear",
    warmup_steps=1,
    optimizer_params={"lr": 1e-3},
    weight_decay=0.01,
    max_grad_norm=1.0,
    show_progress_bar=False,
)


@pytest.fixture(scope="module")
def parity_runs(minilm_dir, tmp_path_factory):
    rows = read_stsb("train", limit=40)
    pairs = [(a, b) for a, b, _ in rows]
    start = tmp_path_factory.mktemp("start")
    # Same initial weights on both sides: crossjax initialises the head and exports it.
    CrossEncoder(minilm_dir, num_labels=1, seed=7).save(start)
    settings = dict(
        epochs=2,
        scheduler="WarmupLinear",
        warmup_steps=3,
        optimizer_params={"lr": 5e-5},
        weight_decay=0.01,
        max_grad_norm=1.0,
        show_progress_bar=False,
    )
    ours, theirs, history = fit_both(start, rows, settings)
    assert ours.model.scan_layers  # the default: scanned layers
    unrolled = CrossEncoder(start, config_kwargs=NO_DROPOUT, scan_layers=False)
    examples = [InputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows]
    unrolled.fit(DataLoader(examples, batch_size=8, shuffle=False), **settings)
    return ours, theirs, history, pairs, unrolled


def test_unrolled_layers_train_as_scanned(parity_runs):
    """The unrolled layout (``scan_layers=False``) trains to old_fit's losses and the scanned run's predictions."""
    ours, _, their_losses, pairs, unrolled = parity_runs
    assert not unrolled.model.scan_layers
    np.testing.assert_allclose([h["loss"] for h in unrolled.training_history], their_losses, rtol=1e-3)
    np.testing.assert_allclose(
        unrolled.predict(pairs, batch_size=16), ours.predict(pairs, batch_size=16), rtol=1e-4, atol=1e-6
    )


def test_per_step_losses_match_sentence_transformers(parity_runs):
    ours, _, their_losses, _, _ = parity_runs
    our_losses = [h["loss"] for h in ours.training_history]
    assert len(our_losses) == len(their_losses) == 10  # 40 pairs / batch 8 x 2 epochs
    np.testing.assert_allclose(our_losses, their_losses, rtol=1e-3)
    # The run really trained: a constant loss would make the comparison vacuous.
    assert abs(our_losses[-1] - our_losses[0]) > 1e-3


def test_final_predictions_match_sentence_transformers(parity_runs):
    ours, theirs, _, pairs, _ = parity_runs
    mine = ours.predict(pairs, batch_size=16)
    reference = theirs.predict(pairs, batch_size=16)
    np.testing.assert_allclose(mine, reference, rtol=1e-3, atol=1e-5)
    assert np.std(mine) > 1e-3


def byte_level_tokenizer(texts: list[str], directory):
    """A byte-level BPE tokenizer (RoBERTa's and ModernBERT's kind: whitespace is part of its tokens) trained on
    ``texts``, with BERT's pair template, saved to ``directory``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=128,
    )  # fmt: skip
    fast.save_pretrained(directory)
    return fast


def test_fit_strips_texts_as_old_fit_does(tmp_path):
    """old_fit's collate strips every text; with a byte-level tokenizer the surrounding whitespace is tokens of
    its own, so a fit that kept it would train on other inputs: the step losses and the trained scores equal
    old_fit's on texts padded with spaces, tabs and newlines."""
    from conftest import save_tiny_bert

    rows = read_stsb("train", limit=16)
    tokenizer = byte_level_tokenizer([t for a, b, _ in rows for t in (a, b)], tmp_path)
    padded = [(f" {a}\n", f"\t{b}  ", s) for a, b, s in rows]
    a, b, _ = padded[0]
    assert tokenizer(a, b)["input_ids"] != tokenizer(a.strip(), b.strip())["input_ids"]  # whitespace is tokens
    save_tiny_bert(tmp_path, tokenizer, dropout=0.0, initializer_range=0.3)
    ours, theirs, history = fit_both(tmp_path, padded, TWO_STEPS)
    our_losses = [h["loss"] for h in ours.training_history]
    assert len(our_losses) == len(history) == 2
    np.testing.assert_allclose(our_losses, history, rtol=1e-5)
    pairs = [(a, b) for a, b, _ in rows]
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), rtol=1e-5, atol=1e-6)


def test_a_text_holding_the_pad_token_leaves_its_embedding_row_as_torch_does(minilm_dir, tmp_path):
    """transformers' embedding tables take ``padding_idx``: torch gives that row no gradient. A text holding the
    pad token's string ("[PAD]") reads the row; crossjax trained it (a probe: DeBERTa's gradient norm 20 against
    5 in sentence-transformers). Two old_fit steps with such texts: the same losses and scores, the row unmoved."""
    from conftest import save_tiny_bert
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    save_tiny_bert(tmp_path, tokenizer, dropout=0.0, initializer_range=0.3)
    rows = [(a + " [PAD] " + b, b + " [PAD]", s) for a, b, s in read_stsb("train", limit=8)]
    before = CrossEncoder(tmp_path, config_kwargs=NO_DROPOUT)
    pad_row = np.asarray(before.model.embeddings.word.embedding[...][tokenizer.pad_token_id])
    ours, theirs, history = fit_both(tmp_path, rows, TWO_STEPS, batch_size=4)
    np.testing.assert_allclose([h["loss"] for h in ours.training_history], history, rtol=1e-5)
    np.testing.assert_array_equal(ours.model.embeddings.word.embedding[...][tokenizer.pad_token_id], pad_row)
    pairs = [(a, b) for a, b, _ in rows]
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), rtol=1e-4, atol=1e-5)


class RecordingCE(torch.nn.CrossEntropyLoss):
    """CrossEntropyLoss that remembers each step's loss."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.history: list[float] = []

    def forward(self, logits, labels):
        loss = super().forward(logits, labels)
        self.history.append(float(loss.detach()))
        return loss


@pytest.mark.parametrize(
    "settings",
    [{}, {"weight": [0.5, 1.0, 2.0], "label_smoothing": 0.1}, {"ignore_index": -1}],
    ids=["default", "weights+smoothing", "ignore -1"],
)
def test_fit_skips_rows_labelled_ignore_index_as_old_fit_does(minilm_dir, tmp_path, settings):
    """torch's cross-entropy leaves out the rows labelled ``ignore_index`` (-100 unless set): old_fit trains on
    the others, and so does fit now (it refused such labels). Three steps of 3-class pairs, a third of them
    unlabelled: the same step losses (the weighted mean over the labelled rows), and the same trained scores."""
    from conftest import save_tiny_bert
    from sentence_transformers import CrossEncoder as TorchCrossEncoder
    from sentence_transformers import InputExample as TorchInputExample
    from transformers import AutoTokenizer

    save_tiny_bert(tmp_path, AutoTokenizer.from_pretrained(str(minilm_dir)), num_labels=3, dropout=0.0)
    ignored = settings.get("ignore_index", -100)
    rows = [(a, b, ignored if i % 3 == 1 else i % 3) for i, (a, b, _) in enumerate(read_stsb("train", limit=12))]
    torch_settings = {k: torch.tensor(v) if k == "weight" else v for k, v in settings.items()}
    loss_kwargs = {"loss_fct": torch.nn.CrossEntropyLoss(**torch_settings)} if settings else {}
    fit_settings = {**TWO_STEPS, "optimizer_params": {"lr": 1e-2}}
    ours = CrossEncoder(tmp_path, config_kwargs=NO_DROPOUT)
    examples = [InputExample(texts=[a, b], label=y) for a, b, y in rows]
    ours.fit(DataLoader(examples, batch_size=4, shuffle=False), **loss_kwargs, **fit_settings)
    torch.manual_seed(0)
    theirs = TorchCrossEncoder(str(tmp_path), device="cpu", config_kwargs=NO_DROPOUT)
    recorder = RecordingCE(**torch_settings)
    loader = torch.utils.data.DataLoader(
        [TorchInputExample(texts=[a, b], label=y) for a, b, y in rows], batch_size=4, shuffle=False
    )
    theirs.old_fit(loader, loss_fct=recorder, **fit_settings)
    assert len(recorder.history) == 3
    np.testing.assert_allclose([h["loss"] for h in ours.training_history], recorder.history, rtol=1e-5)
    pairs = [(a, b) for a, b, _ in rows]
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), rtol=1e-4, atol=1e-5)
    # A loss that does not skip them still refuses the label, naming it.
    with pytest.raises(ValueError, match=f"label {ignored} is out of range for num_labels=3"):
        summed = lambda logits, labels, mask: logits.sum()  # noqa: E731
        ours.fit(DataLoader(examples, batch_size=4), loss_fct=summed, show_progress_bar=False)
