"""Writing a Hugging Face model directory that PyTorch transformers and sentence-transformers load as is."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from crossjax.models.checkpoints import CONFIG, SAFE_WEIGHTS

DEFAULT_ACTIVATIONS = {True: "torch.nn.modules.activation.Sigmoid", False: "torch.nn.modules.linear.Identity"}
ST_CONFIG = "config_sentence_transformers.json"
ST_MODULES = "modules.json"
ST_TRANSFORMER_CONFIG = "sentence_bert_config.json"
# What sentence-transformers 6.2 writes for a CrossEncoder: one Transformer module at the root, whose
# sequence-classification logits are the scores.
ST_MODULES_CONTENT = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
]
ST_TRANSFORMER_CONFIG_CONTENT = {
    "transformer_task": "sequence-classification",
    "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
    "module_output_name": "scores",
}


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("crossjax", "transformers", "jax", "flax"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def atomic_directory_write(target: Path, write) -> Path:
    """Run ``write(tmp_dir)`` then swap tmp_dir into ``target``; keep files of ``target`` not rewritten."""
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export should be as readable as any dir
    try:
        write(tmp)
        if target.exists():
            for entry in target.iterdir():
                if not (tmp / entry.name).exists():
                    if entry.is_dir():
                        shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(str(entry), str(tmp / entry.name))
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_local_path(path, what: str) -> None:
    """Exports are written to the local filesystem (atomically); a URL would silently become a local folder."""
    if path is not None and "://" in str(path):
        raise ValueError(
            f"{what} {str(path)!r} is a URL; crossjax writes models and evaluation files to a local directory. "
            "Save locally and copy it (e.g. `gcloud storage cp -r DIR gs://...`); the examples' --output gs://... "
            "does that for you."
        )


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst



def write_model_directory(
    model: Any,
    save_directory: str | os.PathLike,
    tokenizer=None,
    *,
    activation_fn: str | None = None,
    max_length: int | None = None,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """Write ``model`` (a FlaxPreTrainedModel) as config.json + model.safetensors (+ tokenizer, ST metadata).

    ``config_sentence_transformers.json`` names the activation as a dotted torch path (default: Sigmoid for
    one label, else Identity) and holds the prompts, as sentence-transformers 6 writes it.

    Everything is written to a temporary directory first and moved into place, so an interrupted save
    leaves the previous model intact; other files already in the directory (evaluation CSVs) are kept.
    """
    from safetensors.numpy import save_file

    if activation_fn is None:
        activation_fn = DEFAULT_ACTIVATIONS[model.num_labels == 1]
    sentence_transformers_config = {
        "__version__": _versions(),
        "activation_fn": activation_fn,
        "default_prompt_name": default_prompt_name,
        "model_type": "CrossEncoder",
        "prompts": dict(prompts or {}),
    }

    def write(tmp: Path) -> None:
        save_file(model.hf_state_dict(), str(tmp / SAFE_WEIGHTS), metadata={"format": "pt"})
        config = model.export_config()
        config["sentence_transformers"] = {"activation_fn": activation_fn}
        _write_json(tmp / CONFIG, config)
        _write_json(tmp / ST_CONFIG, sentence_transformers_config)
        # sentence-transformers 6's module layout: with it, ST parses config_sentence_transformers.json (the
        # prompts and the activation) exactly as for a model it saved itself.
        _write_json(tmp / ST_MODULES, ST_MODULES_CONTENT)
        _write_json(tmp / ST_TRANSFORMER_CONFIG, ST_TRANSFORMER_CONFIG_CONTENT)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
            if max_length is not None:
                path = tmp / "tokenizer_config.json"
                tokenizer_config = json.loads(path.read_text()) if path.exists() else {}
                tokenizer_config["model_max_length"] = int(max_length)
                _write_json(path, tokenizer_config)

    check_local_path(save_directory, "save directory")
    return atomic_directory_write(Path(save_directory), write)
