"""ONNX export of a crossjax model: ``onnx/model.onnx`` next to the Hugging Face export, logits out.

The graph is produced from the PyTorch export (the directory ``CrossEncoder.save`` writes) with
``torch.onnx.export(..., dynamo=True)``. The legacy TorchScript exporter (``dynamo=False``) traces Python
control flow in transformers 5's attention-mask code at the example's shape and bakes it in: its graph
gave logits off by ~1e-2 at other sequence lengths. The dynamo exporter keeps both axes symbolic and
matches PyTorch to float32 round-off at any batch size and length.

Layout (what sentence-transformers' ONNX backend and Optimum's ``ORTModelForSequenceClassification`` read):
inputs ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` for families with several token types),
int64, shape ``(batch, sequence)`` with both axes dynamic; output ``logits`` ``(batch, num_labels)``
float32, without the activation (apply the one in ``config_sentence_transformers.json`` yourself).

Needs the ``torch`` extra (torch, onnx, onnxscript) and onnxruntime to verify: ``pip install 'crossjax[torch]'``.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from crossjax.models.checkpoints import resolve_checkpoint_dir

logger = logging.getLogger("crossjax")

ONNX_SUBFOLDER = "onnx"
ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization; torch's dynamo exporter writes 18 and cannot convert below 17
OUTPUT_NAME = "logits"
# protobuf cannot hold a file over 2 GiB: bigger models keep their weights in an external data file.
_SINGLE_FILE_LIMIT_BYTES = 1_800_000_000
# The example batch the graph is traced with; verification runs another batch size and length.
_EXPORT_BATCH, _EXPORT_LENGTH = 2, 7
_VERIFY_BATCH, _VERIFY_LENGTH = 3, 11
VERIFY_TOLERANCE = 1e-4


def takes_token_type_ids(config: Any) -> bool:
    """Whether the graph gets a ``token_type_ids`` input: the family embeds token types and has several.

    RoBERTa-like checkpoints (one token type) and families without type embeddings (DistilBERT) get none,
    as their tokenizers return none.
    """
    from crossjax.models.auto import model_class_for

    # A family declares it as a class attribute, or as a property read from the config (DeBERTa-v2): then the
    # number of token types below decides.
    declared = inspect.getattr_static(model_class_for(config), "uses_token_types", True)
    uses = declared if isinstance(declared, bool) else True
    return uses and int(getattr(config, "type_vocab_size", 0) or 0) > 1


def onnx_input_names(config: Any) -> list[str]:
    names = ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if takes_token_type_ids(config) else names


def import_export_dependencies():
    """torch (returned), transformers, onnx and onnxscript, or an ImportError naming the extra: checked before
    anything is written, so a missing exporter refuses an export instead of leaving half of one."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs PyTorch ({e}); install the extra: pip install 'crossjax[torch]'"
        ) from None
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise ImportError(
                f"ONNX export needs the {module!r} package; install the extra: pip install 'crossjax[torch]'"
            ) from None
    return torch


def example_inputs(config: Any, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """int64 inputs of the given shape: random ids, the first row full, the others right-padded (so the
    mask path is exercised), and two token types where the graph takes them."""
    rng = np.random.default_rng(seed)
    pad = int(getattr(config, "pad_token_id", 0) or 0)
    low = min(3, int(config.vocab_size) - 1)
    ids = rng.integers(low, int(config.vocab_size), size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    for row in range(1, batch):
        real = max(2, length - 2 * row)
        ids[row, real:] = pad
        mask[row, real:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if takes_token_type_ids(config):
        types = np.zeros_like(ids)
        types[:, length // 2 :] = 1
        inputs["token_type_ids"] = types * mask
    return inputs


def _load_torch_model(directory: Path):
    torch = import_export_dependencies()
    from transformers import AutoModelForSequenceClassification

    class LogitsOnly(torch.nn.Module):
        """The sequence-classification model with named inputs and the logits tensor as the only output."""

        def __init__(self, model: Any, input_names: list[str]) -> None:
            super().__init__()
            self.model = model
            self.input_names = input_names

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits

    from crossjax.models.checkpoints import CheckpointError, weights_file

    weights = weights_file(directory)  # a folder without weights: named, not transformers' OSError
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(directory), dtype=torch.float32, output_loading_info=True
        )
    except Exception as error:  # noqa: BLE001 - safetensors' or torch's own errors name no file
        raise CheckpointError(f"{weights} could not be read by transformers: {error}") from error
    if info["missing_keys"]:  # a base model (no classification head): transformers would make up a random one
        raise ValueError(
            f"{directory} has no trained classification head (missing {sorted(info['missing_keys'])}): its graph "
            "would score with random weights no other reader of the folder shares. Load it with "
            "crossjax.CrossEncoder, train or save it, and export that saved folder."
        )
    return LogitsOnly(model.eval(), onnx_input_names(model.config)), model.config


def _graph_tensors(graph: Any):
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graph_tensors(subgraph)


def _name_external_data_for_optimum(path: Path) -> None:
    """A graph over protobuf's 2 GB limit keeps its weights in a file beside it. torch names it
    ``model.onnx.data``; Optimum (sentence-transformers' ONNX backend) fetches only ``model.onnx_data`` from
    the hub, so the file is renamed and the graph's references rewritten (the weights are not read)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(path), load_external_data=False)
    entries = [
        entry
        for tensor in _graph_tensors(graph.graph)
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    ]
    wanted = path.name + "_data"
    locations = {entry.value for entry in entries}
    if len(locations) != 1 or wanted in locations:
        return
    (path.parent / locations.pop()).rename(path.parent / wanted)
    for entry in entries:
        entry.value = wanted
    onnx.save(graph, str(path))


def _stale_external_data(target: Path, written: set[str]) -> list[Path]:
    """A weights file an earlier export left beside the graph that this one did not write: the new graph does
    not read it, and a reader that fetches the folder would download it for nothing."""
    names = (ONNX_FILE + "_data", ONNX_FILE + ".data")
    return [target / ONNX_SUBFOLDER / name for name in names if f"{ONNX_SUBFOLDER}/{name}" not in written]


def _copy_model_files(source: Path, destination: Path) -> None:
    """The model directory's files (weights, config, tokenizer, sentence-transformers' files and card), not its
    ONNX graphs (written anew) nor unfinished saves."""
    from crossjax.models.export import TMP_PREFIX

    for entry in source.iterdir():
        if entry.name == ONNX_SUBFOLDER or entry.name.startswith(TMP_PREFIX):
            continue
        if entry.is_dir():
            shutil.copytree(entry, destination / entry.name)
        else:
            shutil.copy2(entry, destination / entry.name)


def check_opset(opset: Any) -> None:
    """An opset the export can write, else a ValueError saying why (checked before anything is written)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"opset must be an integer >= {MIN_OPSET} (the graph's LayerNormalization operator is opset 17's; "
            f"torch's exporter cannot convert it to older ones), got {opset!r}"
        )
    try:
        import onnx
    except ImportError:
        return  # export_onnx names the missing extra
    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(
            f"opset {opset} is newer than the installed onnx {onnx.__version__} knows "
            f"({onnx.defs.onnx_opset_version()}); the default is {DEFAULT_OPSET}"
        )


def export_onnx(
    model: str | os.PathLike | Any,
    output_dir: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    *,
    verify: bool = True,
) -> Path:
    """Write ``onnx/model.onnx`` for a saved model directory or a ``CrossEncoder``; return the file's path.

    ``model``: a directory ``CrossEncoder.save`` (or transformers) wrote, or a ``CrossEncoder``, which is
    first saved to ``output_dir`` (required then). ``output_dir`` defaults to the model directory, so the
    graph lands next to the export, where sentence-transformers' ``backend="onnx"`` looks for it; another
    ``output_dir`` gets a copy of the model directory's files with the graph (config and tokenizer: a graph
    alone is a folder nothing loads).
    ``verify`` runs the graph in onnxruntime at a batch size and length other than the traced ones and
    raises if its logits differ from PyTorch's by more than ``VERIFY_TOLERANCE`` (skipped, with a warning,
    when onnxruntime is not installed).
    """
    from crossjax.models.export import atomic_directory_write, check_local_path, stale_weight_files

    check_opset(opset)
    torch = import_export_dependencies()  # before a CrossEncoder is saved: a refusal writes nothing
    if hasattr(model, "save") and hasattr(model, "predict"):  # a CrossEncoder
        if output_dir is None:
            raise ValueError("export_onnx(CrossEncoder, output_dir=None): name the directory to save the model to")
        check_local_path(output_dir, "output directory")
        directory = model.save(output_dir)
        if directory is None:  # not process 0 of a multi-process run: nothing to write here
            return Path(output_dir) / ONNX_SUBFOLDER / ONNX_FILE
    else:
        directory = Path(model).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is not a directory; pass a saved model directory")
        directory = resolve_checkpoint_dir(directory)
    check_local_path(output_dir, "output directory")  # as given: Path("") would already be the working directory
    output_dir = Path(directory if output_dir is None else output_dir).expanduser()
    copy_model_from = None if output_dir.resolve() == Path(directory).resolve() else Path(directory)
    path = output_dir.resolve() / ONNX_SUBFOLDER / ONNX_FILE
    wrapper, config = _load_torch_model(Path(directory))
    names = wrapper.input_names
    example = example_inputs(config, _EXPORT_BATCH, min(_EXPORT_LENGTH, _max_length(config)))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=_max_length(config))
    dynamic = tuple({0: batch, 1: sequence} for _ in names)
    weight_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())

    def write(tmp: Path) -> None:
        if copy_model_from is not None:
            _copy_model_files(copy_model_from, tmp)
        target = tmp / ONNX_SUBFOLDER / ONNX_FILE
        target.parent.mkdir(parents=True)
        chatter = io.StringIO()  # the exporter prints its progress to stdout and its converter's notes to
        # stderr: keep stdout for the caller's data, and both readable (the log has them at debug level)
        quiet = contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter)
        with _quiet_torch_logs(), warnings.catch_warnings(), quiet[0], quiet[1], torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(torch.from_numpy(example[name]) for name in names),
                str(target),
                input_names=names,
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=dynamic,
                dynamo=True,
                external_data=weight_bytes > _SINGLE_FILE_LIMIT_BYTES,
            )
        logger.debug("torch.onnx.export: %s", chatter.getvalue().strip())
        written = _graph_opset(target)
        if written != opset:  # the exporter falls back to its own opset when it cannot convert the graph
            raise RuntimeError(
                f"torch's ONNX exporter wrote opset {written} where {opset} was asked (it could not convert the "
                f"graph); nothing was written. Its notes: {chatter.getvalue()[-500:]}"
            )
        if weight_bytes > _SINGLE_FILE_LIMIT_BYTES:
            _name_external_data_for_optimum(target)
        if verify:
            _verify(target, wrapper, config, torch, shown=path)

    def stale(target: Path, written: set[str]) -> list[Path]:
        weights = stale_weight_files(target, written) if copy_model_from is not None else []
        return weights + _stale_external_data(target, written)

    atomic_directory_write(output_dir, write, stale=stale)
    logger.info("Wrote %s (inputs %s, output %s)", path, names, OUTPUT_NAME)
    return path


@contextlib.contextmanager
def _quiet_torch_logs():
    """The exporter logs warnings about operators of packages it does not need (torchvision): hide them."""
    torch_logger = logging.getLogger("torch.onnx")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        torch_logger.setLevel(level)


def _max_length(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", 512) or 512)


def _verify(path: Path, wrapper: Any, config: Any, torch: Any, shown: Path | None = None) -> None:
    """``shown``: the graph's final path, for messages (``path`` is in the save's temporary folder)."""
    try:
        import onnxruntime
    except ImportError:
        logger.warning("onnxruntime is not installed: %s was not checked against PyTorch", shown or path)
        return
    inputs = example_inputs(config, _VERIFY_BATCH, min(_VERIFY_LENGTH, _max_length(config)), seed=1)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise RuntimeError(
            f"onnxruntime {onnxruntime.__version__} cannot load the exported graph (opset {_graph_opset(path)}; a "
            f"runtime supports opsets up to its own release's; the default is {DEFAULT_OPSET}): {str(e)[:300]}"
        ) from e
    (ours,) = session.run([OUTPUT_NAME], inputs)
    with torch.no_grad():
        reference = wrapper(*(torch.from_numpy(inputs[name]) for name in wrapper.input_names)).numpy()
    error = float(np.max(np.abs(ours - reference)))
    if not error <= VERIFY_TOLERANCE:
        raise RuntimeError(
            f"ONNX export check failed: onnxruntime's logits differ from PyTorch's by {error:.3g} "
            f"(> {VERIFY_TOLERANCE}) at batch {_VERIFY_BATCH}, length {inputs['input_ids'].shape[1]}"
        )


def _graph_opset(path: Path) -> int | None:
    """The default (ai.onnx) opset a written graph imports, read without its external weights."""
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next((entry.version for entry in imports if entry.domain in ("", "ai.onnx")), None)


def onnx_feed(session: Any, encoded: Any) -> dict[str, np.ndarray]:
    """The inputs of ``session`` taken from a tokenizer's output, as int64 numpy arrays.

    A tokenizer may return more than the graph takes (e.g. ``token_type_ids`` for a RoBERTa graph); a graph
    input the tokenizer did not return is an error naming it.
    """
    feed = {}
    for graph_input in session.get_inputs():
        if graph_input.name not in encoded:
            raise ValueError(f"the ONNX graph needs {graph_input.name!r}, which the tokenizer did not return")
        feed[graph_input.name] = np.asarray(encoded[graph_input.name], dtype=np.int64)
    return feed


__all__ = ["DEFAULT_OPSET", "ONNX_FILE", "ONNX_SUBFOLDER", "export_onnx", "onnx_feed", "onnx_input_names"]
