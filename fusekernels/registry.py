"""Named extension points: one :class:`Registry` per kind of choice (fusion rules, loss types,
backends, precisions, merge methods, alignment modes).

Everything that offers or checks such a choice (function arguments, ``FusionArguments``, the
command line's ``choices``, the docs) reads its registry, so adding an entry is one function plus
one ``register`` call and the name is accepted everywhere::

    from fusekernels.loss.registry import FUSION_RULES, FusionRule

    FUSION_RULES.register(FusionRule("uniform", weights=lambda present, ce, w, dtype: ...))
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """An ordered ``name -> entry`` mapping with checked lookups.

    ``what`` names the choice in error messages (e.g. ``"fusion"``: "fusion must be one of
    ('mince', 'avgce'), got 'x'"). Entries are objects with a ``name`` attribute, or anything
    registered under an explicit name.
    """

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, entry: T, name: str | None = None, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name`` (default ``entry.name``); returns the entry, so it also
        works as a decorator for functions (``@REGISTRY.register``)."""
        key = name if name is not None else getattr(entry, "name", None) or getattr(entry, "__name__", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"a {self.what} entry needs a non-empty str name, got {key!r}")
        if key in self._entries and not replace:
            raise ValueError(f"{self.what} {key!r} is already registered (pass replace=True to override it)")
        self._entries[key] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (e.g. a test's toy entry)."""
        return self._entries.pop(self.check(name))

    def check(self, name, arg: str | None = None) -> str:
        """``name`` if registered, else ``ValueError`` naming the argument and the choices."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"{arg or self.what} must be one of {self.names()}, got {name!r}")
        return name

    def get_entry(self, name, arg: str | None = None) -> T:
        """The entry registered as ``name`` (``ValueError`` listing the choices otherwise)."""
        return self._entries[self.check(name, arg)]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def help(self) -> str:
        """``"a | b | c"``: the names for help texts."""
        return " | ".join(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries)})"


def simple_registry(what: str, names: Mapping[str, str]) -> Registry[str]:
    """A registry of plain choices: ``{name: one-line description}``."""
    registry: Registry[str] = Registry(what)
    for name, description in names.items():
        registry.register(description, name)
    return registry
