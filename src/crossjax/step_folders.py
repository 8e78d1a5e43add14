"""The layout of crossjax's training checkpoints on disk, for the readers that are not the checkpointer (model
loading, the command line, the trainer's resume): ``<checkpoints>/<step>/`` holds orbax's ``state`` and the step's
exported model in ``model``. Imports nothing heavy, so the command line checks a path without loading JAX.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FOLDER = "model"  # the step's exported model (a Hugging Face folder), inside the step's folder
_CONFIG = "config.json"


def is_checkpoint_step(path: Path) -> bool:
    """A step's folder: named by its step number, holding orbax's ``state``, or only the run's ``meta`` and the
    model (the trainer's ``save_only_model``); an unfinished save is a folder of another name."""
    return path.is_dir() and path.name.isdigit() and ((path / "state").is_dir() or (path / "meta").is_dir())


def holds_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` holds a complete checkpoint step (an interrupted first save leaves none)."""
    return folder.is_dir() and any(is_checkpoint_step(p) for p in folder.iterdir())


def checkpoint_steps(folder: Path) -> list[int]:
    """The complete checkpoint steps in ``folder``, in order (none where it is not a folder)."""
    return sorted(int(p.name) for p in folder.iterdir() if is_checkpoint_step(p)) if folder.is_dir() else []


def step_model(path: Path) -> Path | None:
    """The model folder of the step folder ``path``, or None (not a step folder, or one without a model: written
    before checkpoints held their model, or its export failed)."""
    model = path / MODEL_FOLDER
    return model if is_checkpoint_step(path) and (model / _CONFIG).is_file() else None


def steps_hint(folder: Path) -> str:
    """For an error about ``folder`` not being a model: what to pass instead when it holds checkpoint steps."""
    steps = checkpoint_steps(folder)
    if not steps:
        return ""
    return f"; it holds crossjax training checkpoints: pass one step's folder, e.g. {folder / str(steps[-1])}"
