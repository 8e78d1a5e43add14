"""Writing a Hugging Face model directory that PyTorch transformers and sentence-transformers load as is."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crossjax.models.checkpoints import CONFIG, SAFE_INDEX, SAFE_WEIGHTS, TORCH_INDEX, TORCH_WEIGHTS

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


TMP_PREFIX = ".crossjax-export-tmp-"
# Weight files of Hugging Face checkpoints (transformers' names for PyTorch, safetensors, TensorFlow and Flax
# weights, single or sharded). An export writes model.safetensors and removes the others it finds: a stale
# index would otherwise shadow the new weights in some reader, or be loaded by one that prefers it.
WEIGHT_INDEXES = (SAFE_INDEX, TORCH_INDEX, "tf_model.h5.index.json", "flax_model.msgpack.index.json")
WEIGHT_FILES = (SAFE_WEIGHTS, TORCH_WEIGHTS, "tf_model.h5", "flax_model.msgpack")
WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".h5", ".msgpack")
WEIGHT_SHARD = re.compile(r"(model|pytorch_model|tf_model|flax_model)-\d{5}-of-\d{5}\.(safetensors|bin|h5|msgpack)")


def _is_weight_file_name(name) -> bool:
    """A plain file name (no folder, no ``..``) with a weight file's extension: only such index entries are deleted."""
    return isinstance(name, str) and Path(name).name == name and name.endswith(WEIGHT_EXTENSIONS)


def stale_weight_files(directory: Path, keep: set[str]) -> list[Path]:
    """The weight files in ``directory`` other than ``keep``, in the order to delete them: indexes first (so
    no index ever names a deleted shard), then the shards they name and any other shard, then single files."""
    found: list[Path] = []
    for name in WEIGHT_INDEXES:
        index = directory / name
        if not index.is_file():
            continue
        found.append(index)
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            shards = set()  # unreadable: its shards are still caught by the shard name pattern below
        found.extend(directory / s for s in sorted(shards, key=str) if _is_weight_file_name(s))
    found.extend(sorted(p for p in directory.iterdir() if WEIGHT_SHARD.fullmatch(p.name)))
    found.extend(directory / name for name in WEIGHT_FILES)
    out, seen = [], set()
    for path in found:
        if path.name not in keep and path.name not in seen and path.is_file():
            seen.add(path.name)
            out.append(path)
    return out


def _default_file_mode(directory: Path) -> int:
    """The mode a new file gets here (0o666 less the umask), found without os.umask: changing the process's
    umask, even for an instant, would also apply to files other threads create (orbax saves asynchronously)."""
    probe = directory / ".mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666))
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()


def atomic_directory_write(
    target: Path,
    write: Callable[[Path], None],
    *,
    first: Sequence[str] = (),
    last: Sequence[str] = (),
    stale: Callable[[Path, set[str]], list[Path]] | None = None,
) -> Path:
    """Run ``write(tmp)`` into a temporary directory inside ``target``, then move each file it wrote into place.

    Each file is replaced atomically (``os.replace``): ``first`` (file names) before the others and ``last``
    after them; then ``stale(target, written_names)`` names files to delete. ``target`` itself is never
    renamed or copied, and no entry that ``write`` did not produce is moved or touched (evaluation CSVs, a
    checkpoint folder being written by another thread). If ``write`` fails nothing in ``target`` has changed.

    There is no instant at which a reader finds a file half-written; between two moves it may find new files
    next to old ones (there is no way to swap several files at once without moving the directory).
    """
    target = Path(target).expanduser().resolve()
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    for leftover in target.glob(TMP_PREFIX + "*"):
        if _abandoned(leftover.name):  # a killed save's (an exception cleans up), not one still writing
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{_writer_tag()}-", dir=target))
    done = False
    try:
        write(tmp)
        files = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir()]
        mode = _default_file_mode(tmp)
        for name in files:  # safetensors writes its files private (0600); an export is as readable as any file
            if not (tmp / name).is_symlink():
                os.chmod(tmp / name, mode)
        rank = {name: 0 for name in first} | {name: 2 for name in last}
        for name in sorted(files, key=lambda name: (rank.get(name, 1), name)):
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, destination)
        if stale is not None:
            for path in stale(target, set(files)):
                path.unlink(missing_ok=True)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not done:
            try:
                target.rmdir()  # only when empty: nothing else was written there meanwhile
            except OSError:
                pass
    return target


def _host() -> str:
    """This host's name as a temporary folder's name carries it (no "-": that separates the name's fields)."""
    return socket.gethostname().replace("-", "_")


def _writer_tag() -> str:
    """This process, as a temporary folder's name carries it: host and process id."""
    return f"{_host()}-{os.getpid()}"


def _abandoned(name: str) -> bool:
    """Whether the temporary folder ``name`` (in a folder being saved to) belongs to no save that is still
    writing: its process on this host is gone (a killed save). Another process's or another host's save into
    the same folder is left alone; a folder of an older crossjax, whose name carries no writer, is a leftover."""
    host, pid, *_ = [*name[len(TMP_PREFIX) :].split("-"), "", ""]
    if not pid.isdigit():
        return True
    if host != _host():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's live process
        return False
    return False


def check_local_path(path, what: str) -> None:
    """Exports are written to a local directory (atomically): a URL would silently become a local folder, an
    empty string the working directory, and an existing file cannot become a directory."""
    if path is not None and str(path).strip() == "":
        raise ValueError(f"{what} is an empty string: name a directory (or leave it None to write nothing)")
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {str(path)!r} is an existing file, not a directory")
    if path is not None and "://" in str(path):
        raise ValueError(
            f"{what} {str(path)!r} is a URL; crossjax writes models and evaluation files to a local directory. "
            "Save locally and copy it (e.g. `gcloud storage cp -r DIR gs://...`); the examples' --output gs://... "
            "does that for you."
        )


def ensure_writable_directory(path, what: str) -> None:
    """Make ``path`` (and its parents) and write a probe file in it, so that a folder which cannot take files
    (read-only, under a file, no permission) fails before training, not at its first save hours later."""
    check_local_path(path, what)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".crossjax-write-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r} cannot be written to: {e}") from e


def write_model_directory(
    model: Any,
    save_directory: str | os.PathLike,
    tokenizer=None,
    *,
    activation_fn: str | None = None,
    max_length: int | None = None,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    keep_in_fp32_modules: list[str] | None = None,
) -> Path:
    """Write ``model`` (a FlaxPreTrainedModel) as config.json + model.safetensors (+ tokenizer, ST metadata).

    ``config_sentence_transformers.json`` names the activation as a dotted torch path (default: Sigmoid for
    one label, else Identity) and holds the prompts, as sentence-transformers 6 writes it.

    Everything is written to a temporary directory first and moved into place file by file (see
    :func:`atomic_directory_write`), so an interrupted save leaves the previous model intact and other entries
    of the directory (evaluation CSVs, a checkpoint folder) are neither moved nor touched. The new
    model.safetensors is placed first: transformers and crossjax prefer it to any other weight file, so the
    directory loads the new weights from then on. config.json comes last (a new directory becomes a model
    directory only once complete), and then the weight files of a previous model (a sharded index and its
    shards, pytorch_model.bin, ...) are deleted.
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
    if keep_in_fp32_modules:  # sentence-transformers' own setting, kept for it (crossjax computes in one dtype)
        sentence_transformers_config["keep_in_fp32_modules"] = list(keep_in_fp32_modules)

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
    return atomic_directory_write(
        Path(save_directory), write, first=(SAFE_WEIGHTS,), last=(CONFIG,), stale=stale_weight_files
    )
