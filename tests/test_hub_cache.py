"""Models named by hub id, read offline from a Hugging Face cache another machine filled (the layout
huggingface_hub writes: refs, snapshots by commit), against transformers and sentence-transformers 6.2 reading
the same cache: short names, revisions, ``subfolder``, ``SENTENCE_TRANSFORMERS_HOME``, options given in the
keyword dicts, and the model card's base-model revision."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_bert

from crossjax import CrossEncoder
from crossjax.models import FlaxAutoModelForSequenceClassification
from crossjax.models.checkpoints import CheckpointError

PAIRS = [("a man eats", "someone is eating"), ("a plane", "the ocean is deep")]
MAIN, V2, SUB = "a" * 40, "b" * 40, "c" * 40


def _snapshot(cache: Path, repo: str, commit: str, model: Path, refs: tuple[str, ...], inside: str = "") -> None:
    folder = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model, folder / "snapshots" / commit / inside)
    for ref in refs:
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def cache(minilm_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    root = tmp_path_factory.mktemp("hub")
    one = save_tiny_bert(root / "one", tokenizer, 1, seed=1)
    three = save_tiny_bert(root / "three", tokenizer, 3, seed=2)
    cache = root / "cache"
    _snapshot(cache, "cross-encoder/tiny-ce", MAIN, one, ("main",))
    _snapshot(cache, "cross-encoder/tiny-ce", V2, three, ("v2",))
    _snapshot(cache, "acme/nested", SUB, one, ("main",), inside="reranker")
    return cache


@pytest.fixture
def offline(cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_short_name_is_looked_up_in_the_cross_encoder_organisation(offline):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    ours = CrossEncoder("tiny-ce")
    theirs = STCrossEncoder("tiny-ce", device="cpu")
    np.testing.assert_allclose(ours.predict(PAIRS), theirs.predict(PAIRS), atol=1e-6)
    assert ours.model_card_data.base_model == "cross-encoder/tiny-ce"
    assert ours.model_card_data.base_model_revision == MAIN  # the commit the id resolved to
    with pytest.raises(CheckpointError, match="cross-encoder/no-such-model.*and as 'no-such-model'"):
        CrossEncoder("no-such-model")


def test_revisions_subfolders_and_options_in_keyword_dicts(offline, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    v2 = CrossEncoder("cross-encoder/tiny-ce", revision="v2")
    assert v2.num_labels == 3 and v2.model_card_data.base_model_revision == "v2"
    v2.save(str(tmp_path / "saved"))
    assert "<!-- at revision v2 -->" in (tmp_path / "saved" / "README.md").read_text()
    # sentence-transformers reads download options in config_kwargs / model_kwargs too
    assert CrossEncoder("cross-encoder/tiny-ce", config_kwargs={"revision": "v2"}).num_labels == 3
    with pytest.raises(ValueError, match="revision='v2'.*revision='main'.*disagree"):
        CrossEncoder("cross-encoder/tiny-ce", revision="main", model_kwargs={"revision": "v2"})
    # a model in a folder of its repository (transformers' subfolder=)
    ours = FlaxAutoModelForSequenceClassification.from_pretrained("acme/nested", subfolder="reranker")
    theirs = AutoModelForSequenceClassification.from_pretrained("acme/nested", subfolder="reranker").eval()
    ids = np.array([[101, 2000, 2001, 102, 2002, 102]])
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(input_ids=ids, token_type_ids=np.zeros_like(ids))), expected, atol=1e-6)
    assert CrossEncoder("acme/nested", model_kwargs={"subfolder": "reranker"}).num_labels == 1
    with pytest.raises(CheckpointError, match="no config.json in its folder 'elsewhere'"):
        CrossEncoder("acme/nested", config_kwargs={"subfolder": "elsewhere"})
    with pytest.raises(CheckpointError, match="force_download=True"):
        FlaxAutoModelForSequenceClassification.from_pretrained("acme/nested", subfolder="reranker", force_download=True)


def test_sentence_transformers_home_is_the_default_cache_folder(offline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError):
        CrossEncoder("cross-encoder/tiny-ce")
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(offline))
    assert CrossEncoder("cross-encoder/tiny-ce").num_labels == 1
    # a cache folder given in the keyword dicts wins over the environment's, as in sentence-transformers
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "empty"))
    assert CrossEncoder("cross-encoder/tiny-ce", model_kwargs={"cache_dir": str(offline)}).num_labels == 1
    # force_download asks nothing of a local folder (transformers loads it too)
    local = offline / "models--cross-encoder--tiny-ce" / "snapshots" / MAIN
    assert FlaxAutoModelForSequenceClassification.from_pretrained(local, force_download=True, local_files_only=True)


def test_the_command_line_takes_a_revision_and_a_cache_folder(offline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from crossjax import cli

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))  # only --cache-folder holds it
    out = tmp_path / "v2"
    args = ["export", "--model", "cross-encoder/tiny-ce", "--revision", "v2", "--cache-folder", str(offline)]
    assert cli.main([*args, "--output", str(out)]) == 0
    assert CrossEncoder(str(out)).num_labels == 3
