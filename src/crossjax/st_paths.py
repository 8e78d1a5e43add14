"""sentence-transformers' other import paths for crossjax's classes, so that a script ported by changing
its package name imports what it imported before.

sentence-transformers keeps older one-module-per-class paths as aliases (``from
sentence_transformers.cross_encoder.losses.BinaryCrossEntropyLoss import BinaryCrossEntropyLoss``; its own
examples still use them) and names modules by topic (``...cross_encoder.evaluation.classification``). Each
alias here is a small module put straight into ``sys.modules``: the import system then finds it without
setting it as an attribute of the package, whose attribute of the same name stays the class.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
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
    parent of other aliases (its attributes are those child modules). It is a package: the paths below it
    (``{name}.BinaryCrossEntropyLoss``, ``{name}.classification``) are the target's own, found by
    :class:`_AliasFinder`."""

    def __init__(self, name: str, target: str | None) -> None:
        standing_for = f" (crossjax's {target})" if target else ""
        super().__init__(name, f"sentence-transformers' import path {name}{standing_for}")
        self.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        self.__path__: list[str] = []
        self._target = target

    def __getattr__(self, attribute: str):
        if self._target is not None and not attribute.startswith("__"):
            target = importlib.import_module(self._target)
            if hasattr(target, attribute):  # the target's class wins over a child module of the same name
                return getattr(target, attribute)
        child = sys.modules.get(f"{self.__name__}.{attribute}")
        if child is not None:
            return child
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")

    def __setattr__(self, attribute: str, value) -> None:
        # The import system sets each imported child module as an attribute of its parent: here that would hide
        # the target's class of the same name (``losses.BinaryCrossEntropyLoss``), which __getattr__ gives.
        if isinstance(value, types.ModuleType) and sys.modules.get(f"{self.__name__}.{attribute}") is value:
            return
        super().__setattr__(attribute, value)

    def __dir__(self) -> list[str]:
        target = set(dir(importlib.import_module(self._target))) if self._target else set()
        return sorted(set(super().__dir__()) | target)


class _AliasLoader(importlib.abc.Loader):
    """Loads an alias's child as an alias of the target's module of the same name (not that module object: the
    import system would give it this path's ``__spec__``)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return _LazyAlias(spec.name, self.target)

    def exec_module(self, module) -> None:
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    """``{alias}.{child}`` for a :class:`_LazyAlias` standing for a crossjax module: that module's ``{child}``
    (``crossjax.cross_encoder.losses.BinaryCrossEntropyLoss`` is ``crossjax.losses.BinaryCrossEntropyLoss``)."""

    def find_spec(self, fullname: str, path=None, target=None):
        parent_name, _, child = fullname.rpartition(".")
        parent = sys.modules.get(parent_name)
        if not isinstance(parent, _LazyAlias) or parent._target is None:
            return None
        target_name = f"{parent._target}.{child}"
        importlib.import_module(parent._target)  # it makes its own alias modules when imported
        if target_name not in sys.modules and importlib.util.find_spec(target_name) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(target_name))


def alias_paths(aliases: Mapping[str, str | None]) -> None:
    """Make each of ``aliases`` (full module names) importable, standing for its crossjax module (imported only
    when a name is read from it), or, for None, holding the aliases below it; and the paths below them."""
    for name, target in aliases.items():
        if name not in sys.modules:
            sys.modules[name] = _LazyAlias(name, target)
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def alias_class_modules(package: str, names: Iterable[str]) -> None:
    """``{package}.{Name}`` for each class name: a module holding that class (the older paths)."""
    alias_modules(package, {name: [name] for name in names})
