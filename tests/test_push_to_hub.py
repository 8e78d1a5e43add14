# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
"""``CrossEncoder.push_to_hub``: the hub is unreachable here, so these tests check the calls it makes to
``huggingface_hub.HfApi`` (a recording fake) and what the uploaded folder holds at upload time - nothing more."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from test_fit_behaviour import tiny_dir, tiny_dirs  # noqa: F401 - fixtures used by name

from crossjax import CrossEncoder


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records each call (and the files of an uploaded folder)."""

    calls: list[tuple[str, dict]] = []
    files_there: set[str] = set()  # what the repository already holds

    def __init__(self, token=None, **kwargs) -> None:
        self.calls.append(("__init__", {"token": token, **kwargs}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        owner_and_name = repo_id if "/" in repo_id else f"the-user/{repo_id}"
        return SimpleNamespace(repo_id=owner_and_name, url=f"https://huggingface.co/{owner_and_name}")

    def file_exists(self, repo_id, filename, **kwargs):
        self.calls.append(("file_exists", {"repo_id": repo_id, "filename": filename, **kwargs}))
        return filename in self.files_there

    def create_branch(self, repo_id, branch, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch, **kwargs}))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path, "files": files, **kwargs}))
        return SimpleNamespace(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
            pr_url=f"https://huggingface.co/{repo_id}/discussions/1",
        )


@pytest.fixture
def hub(monkeypatch) -> list[tuple[str, dict]]:
    RecordingHfApi.calls = []
    RecordingHfApi.files_there = set()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    return RecordingHfApi.calls


@pytest.fixture(scope="module")
def model(tiny_dir) -> CrossEncoder:
    return CrossEncoder(tiny_dir, max_length=32)


def test_push_creates_the_repo_and_uploads_a_saved_export(model, hub):
    url = model.push_to_hub("my-reranker", token="hf_secret", private=True)

    assert [name for name, _ in hub] == ["__init__", "create_repo", "file_exists", "upload_folder"]
    assert hub[0][1]["token"] == "hf_secret"
    assert hub[1][1] == {"repo_id": "my-reranker", "private": True, "exist_ok": True}
    upload = hub[3][1]
    assert upload["repo_id"] == "the-user/my-reranker"  # the owner the hub reports, as sentence-transformers does
    assert upload["commit_message"] == "Add new CrossEncoder model (crossjax)"
    assert upload["create_pr"] is False and upload["revision"] is None
    # What save() writes: weights, config, tokenizer and sentence-transformers' metadata (+ the card, if any).
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config_sentence_transformers.json",
                 "modules.json", "sentence_bert_config.json"):  # fmt: skip
        assert name in upload["files"], upload["files"]
    assert not Path(upload["folder_path"]).exists()  # the temporary folder is removed after the upload
    assert url == "https://huggingface.co/the-user/my-reranker/commit/abc123"


def test_push_to_a_branch_as_a_pull_request_with_a_message(model, hub):
    url = model.push_to_hub("org/ranker", commit_message="v2", exist_ok=False, revision="dev", create_pr=True)
    calls = dict(hub)
    assert calls["create_repo"]["exist_ok"] is True  # a PR targets an existing repository, as in sentence-transformers
    assert calls["create_branch"] == {"repo_id": "org/ranker", "branch": "dev", "exist_ok": True}
    assert calls["upload_folder"]["commit_message"] == "v2"
    assert calls["upload_folder"]["revision"] == "dev" and calls["upload_folder"]["create_pr"] is True
    assert url == "https://huggingface.co/org/ranker/discussions/1"


def test_push_of_a_local_folder_uploads_it_as_is(model, hub, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    model.push_to_hub("org/ranker", local_model_path=str(tmp_path), exist_ok=False)
    calls = dict(hub)
    assert calls["create_repo"]["exist_ok"] is False
    assert calls["upload_folder"]["folder_path"] == str(tmp_path) and calls["upload_folder"]["files"] == ["config.json"]


def test_push_keeps_the_repository_s_card_unless_asked_and_writes_safetensors(model, hub):
    """As sentence-transformers 6.2: a README.md the repository has is kept unless replace_model_card=True; and
    safe_serialization=False writes safetensors (transformers 5 writes nothing else)."""
    RecordingHfApi.files_there = {"README.md"}
    model.push_to_hub("org/ranker", safe_serialization=False)
    upload = dict(hub)["upload_folder"]
    assert upload["ignore_patterns"] == ["README.md"] and "model.safetensors" in upload["files"]
    hub.clear()
    model.push_to_hub("org/ranker", replace_model_card=True)
    assert "file_exists" not in dict(hub) and "ignore_patterns" not in dict(hub)["upload_folder"]


def test_trainer_pushes_with_the_arguments_hub_options_and_never_writes_the_token(model, hub, tmp_path):
    """``push_to_hub=True`` ends a run with Hugging Face's ``Trainer.push_to_hub``: the repository private as
    ``hub_private_repo`` asks, the upload with ``hub_token`` and to ``hub_revision``; the token appears in no file
    the run writes (its arguments read back ``<HUB_TOKEN>``, as Hugging Face's ``to_dict`` does)."""
    from crossjax import CrossEncoderTrainer, CrossEncoderTrainingArguments

    token = "hf_SECRET_abc123"
    args = CrossEncoderTrainingArguments(
        str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True,
        push_to_hub=True, hub_model_id="me/reranker", hub_token=token, hub_private_repo=True, hub_revision="v1",
    )  # fmt: skip
    assert args.to_dict()["hub_token"] == "<HUB_TOKEN>" and args.hub_token == token
    data = {"a": ["one two", "three", "four five", "six"], "b": ["x", "y z", "w", "v"], "label": [1.0, 0.0, 1.0, 0.0]}
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    create = next(kwargs for name, kwargs in hub if name == "create_repo")
    assert create["repo_id"] == "me/reranker" and create["private"] is True
    upload = next(kwargs for name, kwargs in hub if name == "upload_folder")
    assert upload["revision"] == "v1" and upload["commit_message"] == "End of training"
    assert any(name == "__init__" and kwargs["token"] == token for name, kwargs in hub)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if token in p.read_text(errors="ignore")]
    model.save(tmp_path / "saved")
    assert token not in (tmp_path / "saved" / "README.md").read_text()


@pytest.mark.parametrize("strategy, messages", [
    ("every_save", ["Training in progress, step 2", "Training in progress, step 4", "End of training"]),
    ("end", ["End of training"]),
])  # fmt: skip
def test_trainer_pushes_each_save_as_hugging_face_s_default_hub_strategy(model, hub, tmp_path, strategy, messages):
    """Hugging Face's ``hub_strategy="every_save"`` (its default) uploads the model at every save, with its
    commit message, so a crashed run still left its last saved model on the hub; ``"end"`` only at the end.
    The strategies that upload checkpoint-N folders (crossjax writes orbax checkpoints) are refused up front."""
    from crossjax import CrossEncoderTrainer, CrossEncoderTrainingArguments

    data = {"a": ["one two", "three", "four five", "six"], "b": ["x", "y z", "w", "v"], "label": [1.0, 0.0, 1.0, 0.0]}

    def trainer(**hub_options) -> CrossEncoderTrainer:
        args = CrossEncoderTrainingArguments(
            str(tmp_path / hub_options["hub_strategy"]), max_steps=4, per_device_train_batch_size=2, save_steps=2,
            disable_tqdm=True, push_to_hub=True, hub_model_id="me/reranker", **hub_options,
        )  # fmt: skip
        return CrossEncoderTrainer(model=model, args=args, train_dataset=data)

    run = trainer(hub_strategy=strategy)
    run.train()
    run.save_model()  # as Hugging Face's: with push_to_hub, the saved model is uploaded too
    assert [kwargs["commit_message"] for name, kwargs in hub if name == "upload_folder"] == [*messages, "Model save"]
    with pytest.raises(ValueError, match="hub_strategy must be one of"):  # a typo is named, not an every_save
        CrossEncoderTrainingArguments(str(tmp_path), hub_strategy="every_step")
    for refused in ("checkpoint", "all_checkpoints"):
        with pytest.raises(ValueError, match=f"hub_strategy='{refused}' uploads Hugging Face's checkpoint-N"):
            trainer(hub_strategy=refused).train()


def test_each_push_names_its_repository_in_the_card(tiny_dir, hub):
    """As sentence-transformers 6.2: the card's model id is the full id of the repository pushed to (the owner
    the hub reports for a bare name), set anew by every push."""
    model = CrossEncoder(tiny_dir, max_length=32)
    model.push_to_hub("first-ranker")
    assert model.model_card_data.model_id == "the-user/first-ranker"
    model.push_to_hub("org/second-ranker")
    assert model.model_card_data.model_id == "org/second-ranker"
    assert [name for name, _ in hub].count("create_repo") == 2


def test_an_unreachable_hub_or_a_missing_folder_is_said_in_words(model, tmp_path, monkeypatch):
    """Offline, ``huggingface_hub``'s client raised a bare ``ConnectError: Name or service not known`` naming neither
    the hub nor the repository; a missing ``local_model_path`` was found only after the network call."""

    class Offline(RecordingHfApi):
        def create_repo(self, repo_id, **kwargs):
            raise type("ConnectError", (type("TransportError", (Exception,), {}),), {})("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(ConnectionError, match="could not reach the Hugging Face hub to create 'me/ranker'"):
        model.push_to_hub("me/ranker")
    with pytest.raises(ValueError, match="no such folder to upload"):
        model.push_to_hub("me/ranker", local_model_path=str(tmp_path / "missing"))

    class Refused(RecordingHfApi):  # a hub error of another kind is the hub's own
        def create_repo(self, repo_id, **kwargs):
            raise PermissionError("403: no write access")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refused)
    with pytest.raises(PermissionError, match="403"):
        model.push_to_hub("me/ranker")
