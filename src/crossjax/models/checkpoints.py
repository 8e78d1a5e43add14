"""Reading Hugging Face checkpoints: hub resolution, config, and weights (safetensors or torch .bin)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from crossjax import step_folders

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be used, with the file and the problem named."""


class UnknownModelTypeError(CheckpointError):
    """transformers could not build a config for this ``model_type`` (the auto class names what is supported)."""

    def __init__(self, model_type: str, detail: str) -> None:
        super().__init__(f"model_type {model_type!r} could not be read: {detail}")
        self.model_type = model_type


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any) -> Path:
    """A local directory as is; anything else is a hub id fetched (config + weights) with huggingface_hub.
    ``subfolder`` is a folder inside it that holds the model, as transformers reads it."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        inner = path / subfolder if subfolder else path
        if not (inner / CONFIG).is_file() and step_folders.is_checkpoint_step(inner):  # a crossjax training step
            model = step_folders.step_model(inner)
            if model is not None:
                return model  # it holds its model there
            raise CheckpointError(
                f"{inner} is a crossjax training checkpoint without a model folder (written before checkpoints held "
                "their model, or its export failed): resume the run from it and save, or load a later step"
            )
        if not (inner / CONFIG).is_file():
            hint = step_folders.steps_hint(inner)
            raise CheckpointError(f"{inner} has no {CONFIG}: it is not a Hugging Face model directory{hint}")
        return inner
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the model directory that holds {CONFIG}")
    if str(name_or_path).startswith((".", "/", "~")) or os.sep + os.sep in str(name_or_path):
        raise CheckpointError(f"Model directory {path} does not exist")
    if hub_kwargs.get("force_download") and (hub_kwargs.get("local_files_only") or _hub_offline()):
        raise CheckpointError(
            f"{name_or_path!r}: force_download=True asks for a download, but local_files_only=True (or "
            "HF_HUB_OFFLINE=1) forbids one (transformers refuses the pair too)"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model*.bin"]
    if subfolder:
        patterns = [f"{subfolder.strip('/')}/{pattern}" for pattern in patterns]
    try:
        local = snapshot_download(str(name_or_path), allow_patterns=patterns, **hub_kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the id named
        raise CheckpointError(
            f"Could not find {name_or_path!r} locally or download it from the Hugging Face hub: {e}"
        ) from e
    inner = Path(local) / subfolder if subfolder else Path(local)
    if not (inner / CONFIG).is_file():
        where = f" in its folder {subfolder!r}" if subfolder else ""
        revision = f" at revision {hub_kwargs['revision']!r}" if hub_kwargs.get("revision") else ""
        raise CheckpointError(f"{str(name_or_path)!r}{revision} has no {CONFIG}{where} ({inner})")
    return inner


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_commit(directory: str | os.PathLike) -> str | None:
    """The commit a folder of the Hugging Face cache holds (``.../snapshots/<commit>/...``), else None."""
    parts = Path(directory).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        out = {}
        with safe_open(str(file), framework="flax") as f:
            for key in f.keys():
                out[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
        return out
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"Could not read {file}: {e}. The file is truncated or corrupt.") from e


def _read_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{file} is a PyTorch pickle; reading it needs torch. Install it with "
            "`pip install crossjax[torch]` (or convert the checkpoint to model.safetensors)."
        ) from None
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"Could not read {file}: {e}") from e
    return {k: v.detach().float().numpy() for k, v in state.items()}


# transformers' order (``PreTrainedModel.from_pretrained`` on a local directory): the single safetensors file
# wins over its sharded index, and safetensors over torch pickles. A directory holding several (a sharded model
# later overwritten by a single-file one) must load the same weights here as in transformers.
WEIGHTS_PREFERENCE = (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX)


def _read_sharded(index: Path, reader) -> dict[str, np.ndarray]:
    directory = index.parent
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{index} is not a valid sharded-checkpoint index: {e}") from e
    tensors: dict[str, np.ndarray] = {}
    for shard in shards:
        if not (directory / shard).is_file():
            raise CheckpointError(f"{index} names shard {shard}, which is missing from {directory}")
        tensors.update(reader(directory / shard))
    return tensors


def read_state_dict(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    """All tensors of a checkpoint as float32 numpy, and the file they came from.

    The first of ``WEIGHTS_PREFERENCE`` present is read, as transformers does: model.safetensors, then the
    sharded model.safetensors.index.json, then pytorch_model.bin, then pytorch_model.bin.index.json.
    """
    path = weights_file(directory)
    reader = _read_safetensors if path.name in (SAFE_WEIGHTS, SAFE_INDEX) else _read_torch_bin
    if path.name in (SAFE_INDEX, TORCH_INDEX):
        return _read_sharded(path, reader), path
    return reader(path), path


def invalid_json(path: Path) -> str | None:
    """``"<path> is not valid JSON: <why>"`` for a file that does not parse (transformers' own error, json's,
    names no file), else None."""
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"{path} is not valid JSON: {error}"
    return None


def weights_file(directory: Path) -> Path:
    """The weights file transformers reads in ``directory`` (the first of ``WEIGHTS_PREFERENCE`` present)."""
    for name in WEIGHTS_PREFERENCE:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise CheckpointError(
        f"{directory} has no weights: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}"
    )


CLASSIFICATION_PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")
# auto classes a checkpoint's own code may replace (its config's ``auto_map``): the model or its config
CUSTOM_CODE_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForSequenceClassification")


def labels_in_config_file(directory: str | os.PathLike) -> int | None:
    """The number of labels a checkpoint's own config.json gives its head (transformers' default 2 when it names
    none); None without a readable file."""
    try:
        raw = json.loads((Path(directory) / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    if isinstance(raw.get("id2label"), dict):
        return len(raw["id2label"])
    return int(raw["num_labels"]) if isinstance(raw.get("num_labels"), int) else 2


def _custom_code_classes(config_file: Path) -> str:
    """The model classes a local config.json maps to its own code (``auto_map``), as ``"AutoModel -> x.Y"``
    pairs; empty when it uses transformers' classes (a custom tokenizer alone does not count)."""
    try:
        auto_map = json.loads(config_file.read_text()).get("auto_map") if config_file.is_file() else None
    except (OSError, ValueError, AttributeError):
        return ""  # transformers' reading names a bad file below
    if not isinstance(auto_map, dict):
        return ""
    return ", ".join(f"{name} -> {auto_map[name]}" for name in CUSTOM_CODE_CLASSES if auto_map.get(name))


def load_config(directory: str | os.PathLike, num_labels: int | None = None, **config_kwargs: Any):
    """transformers' AutoConfig for a local directory (or a config file, or a hub id with hub options among
    ``config_kwargs``), with a clear error for a bad config.json."""
    from transformers import AutoConfig

    directory = Path(directory)
    config_file = directory if directory.is_file() else directory / CONFIG
    if num_labels is not None:
        config_kwargs["num_labels"] = int(num_labels)
    custom = _custom_code_classes(config_file)
    if custom:
        raise CheckpointError(
            f"{str(directory)!r} needs its own modelling code ({custom}: trust_remote_code in transformers), which "
            "crossjax cannot run: its Flax models are its own. Loaded as a standard class its weights would not "
            "fit (transformers does that without trust_remote_code, and scores with random weights)."
        )
    try:
        # never transformers' interactive "run the custom code?" prompt: crossjax runs no checkpoint's code
        config = AutoConfig.from_pretrained(str(directory), **{"trust_remote_code": False, **config_kwargs})
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError/KeyError/OSError here
        from transformers import CONFIG_MAPPING

        if not config_file.is_file():
            raise CheckpointError(f"Could not read a config from {str(directory)!r}: {e}") from e
        broken = invalid_json(config_file)
        if broken is not None:
            raise CheckpointError(broken) from e
        raw = json.loads(config_file.read_text())
        model_type = raw.get("model_type")
        if model_type is not None and model_type not in CONFIG_MAPPING:
            raise UnknownModelTypeError(model_type, f"{config_file}: {e}") from e
        raise CheckpointError(f"Could not read the config in {config_file}: {e}") from e
    if config.num_labels == 1 and getattr(config, "problem_type", None) in CLASSIFICATION_PROBLEM_TYPES:
        # A classifier's checkpoint loaded as a one-output model (a reranker from an NLI model): its
        # problem_type was its replaced head's, and transformers refuses to read it next to num_labels=1.
        config.problem_type = None
    return config

