"""sentence-transformers' ``readers`` path to ``InputExample`` (``from sentence_transformers.readers import
InputExample``, as its legacy example scripts write it)."""

from __future__ import annotations

from crossjax.data import InputExample
from crossjax.st_paths import alias_class_modules

__all__ = ["InputExample"]

alias_class_modules(__name__, ["InputExample"])
