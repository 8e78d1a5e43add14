"""sentence-transformers' other import paths for crossjax's classes, so that a script ported by changing
its package name imports what it imported before.

sentence-transformers keeps older one-module-per-class paths as aliases (``from
sentence_transformers.cross_encoder.losses.BinaryCrossEntropyLoss import BinaryCrossEntropyLoss``; its own
examples still use them) and names modules by topic (``...cross_encoder.evaluation.classification``). Each
alias here is a small module put straight into ``sys.modules``: the import system then finds it without
setting it as an attribute of the package, whose attribute of the same name stays the class.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Iterable, Mapping


def alias_modules(package: str, modules: Mapping[str, Iterable[str]]) -> None:
    """Make ``{package}.{module}`` importable for each module, holding those names of the package."""
    parent = sys.modules[package]
    for module_name, names in modules.items():
        full_name = f"{package}.{module_name}"
        if full_name in sys.modules:
            continue
        module = types.ModuleType(full_name, f"sentence-transformers' import path for {package}'s {', '.join(names)}")
        module.__spec__ = importlib.machinery.ModuleSpec(full_name, None)  # importlib.util.find_spec finds it
        for name in names:
            setattr(module, name, getattr(parent, name))
        sys.modules[full_name] = module


def alias_class_modules(package: str, names: Iterable[str]) -> None:
    """``{package}.{Name}`` for each class name: a module holding that class (the older paths)."""
    alias_modules(package, {name: [name] for name in names})
