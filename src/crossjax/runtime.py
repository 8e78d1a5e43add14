"""Process-level console rules shared by the library: which process writes, and one progress-bar rule.

Imports nothing heavy (jax is imported on first use), so evaluators and data code stay light.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("crossjax")


def is_main_process() -> bool:
    """Only process 0 of a multi-process run writes exports, CSV files, logs and progress bars."""
    import jax

    return jax.process_index() == 0


def show_progress_default(show_progress_bar: bool | None) -> bool:
    """None follows the logging level as sentence-transformers does (INFO or DEBUG -> on)."""
    if show_progress_bar is None:
        return logger.getEffectiveLevel() <= logging.INFO
    return bool(show_progress_bar)


def progress_bar(iterable: Any = None, *, enabled: bool | None, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one when None); without a bar: the iterable itself, or None.

    Only process 0 of a multi-process run draws it.
    """
    if not (show_progress_default(enabled) and is_main_process()):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **tqdm_kwargs)
