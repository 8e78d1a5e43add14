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


class _LazyAlias(types.ModuleType):
    """A module standing for another (``target``), imported on first attribute access; without a target, a
    parent of other aliases (its attributes are those child modules)."""

    def __init__(self, name: str, target: str | None) -> None:
        standing_for = f" (crossjax's {target})" if target else ""
        super().__init__(name, f"sentence-transformers' import path {name}{standing_for}")
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self._target = target

    def __getattr__(self, attribute: str):
        child = sys.modules.get(f"{self.__name__}.{attribute}")
        if child is not None:
            return child
        if self._target is None or attribute.startswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")
        return getattr(importlib.import_module(self._target), attribute)

    def __dir__(self) -> list[str]:
        target = set(dir(importlib.import_module(self._target))) if self._target else set()
        return sorted(set(super().__dir__()) | target)


def alias_paths(aliases: Mapping[str, str | None]) -> None:
    """Make each of ``aliases`` (full module names) importable, standing for its crossjax module (imported only
    when a name is read from it), or, for None, holding the aliases below it."""
    for name, target in aliases.items():
        if name not in sys.modules:
            sys.modules[name] = _LazyAlias(name, target)


def alias_class_modules(package: str, names: Iterable[str]) -> None:
    """``{package}.{Name}`` for each class name: a module holding that class (the older paths)."""
    alias_modules(package, {name: [name] for name in names})
