"""Griffe extension for the API reference: reads the docstrings' conventions.

- Sphinx roles (``:func:`fusion_loss```, ``:class:`~x.Y```), which read well in ``help()``,
  become links. A role is resolved like a name in Python: in the documented object, then in each
  enclosing scope up to the package; a name a package exports lazily is looked up in its
  submodules. A documented target becomes a cross-reference (``mkdocs build --strict`` fails if
  no page renders it); a role naming ``fusekernels...`` that does not resolve is reported as a
  broken reference (strict mode fails on it); other targets (``datasets.Dataset``) stay code.
- ``a, b: description`` in an ``Args:`` section documents each of ``a`` and ``b`` (continuation
  lines go with the last one), so that unknown parameters can still be reported.
- reST simple tables (``=====  =====`` rules) are shown as preformatted text, as in ``help()``;
  a paragraph ending in ``::`` before an indented literal block ends in ``:``.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(func|class|meth|mod|data|attr|exc|obj|const):`(~?)([\w.]+)(\(\))?`")
_ARGS_HEADER = re.compile(r"^(\s*)(?:Args|Arguments|Parameters|Keyword Args):\s*$")
_MULTI_ARG = re.compile(r"^(\s+)(\*{0,2}\w+(?:, \*{0,2}\w+)+): (.*)$")
_logger = griffe.get_logger(__name__)


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package into Markdown references."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = _rst_literals(_split_multi_args(obj.docstring.value))
                obj.docstring.value = _ROLE.sub(lambda m: self._link(m, obj, loader), text)

    def _link(self, match: re.Match, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
        role, tilde, target, call = match.group(1), match.group(2), match.group(3), match.group(4) or ""
        shown = (target.rsplit(".", 1)[-1] if tilde else target) + call
        found = _resolve(target, role, obj, loader)
        if found is None:
            if target.startswith("fusekernels"):
                _logger.warning("%s: broken reference %s", obj.path, match.group(0))
            return f"`{shown}`"
        if found.docstring is None:  # not rendered (members without a docstring are hidden)
            return f"`{shown}`"
        return f"[`{shown}`][{found.path}]"


_TABLE_RULE = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def _rst_literals(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if _TABLE_RULE.match(lines[i]):
            # a simple table: top rule, header, rule, rows, bottom rule (the third rule)
            j, rules = i + 1, 1
            while j < len(lines) and rules < 3:
                rules += bool(_TABLE_RULE.match(lines[j]))
                j += 1
            out += ["```text", *lines[i:j], "```"]
            i = j
            continue
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            line = line.rstrip()[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


def _split_multi_args(text: str) -> str:
    out, in_args, indent = [], False, ""
    for line in text.splitlines():
        header = _ARGS_HEADER.match(line)
        if header:
            in_args, indent = True, header.group(1)
        elif in_args and line.strip() and len(line) - len(line.lstrip()) <= len(indent):
            in_args = False
        multi = _MULTI_ARG.match(line) if in_args else None
        if multi and len(multi.group(1)) > len(indent):
            out.extend(f"{multi.group(1)}{name}: {multi.group(3)}" for name in multi.group(2).split(", "))
        else:
            out.append(line)
    return "\n".join(out)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member)


def _lookup(loader: griffe.GriffeLoader, path: str) -> griffe.Object | None:
    try:
        found = loader.modules_collection[path]
        return found.final_target if found.is_alias else found
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(target: str, role: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> griffe.Object | None:
    scope: griffe.Object | None = obj
    candidates = []
    while scope is not None:
        candidates.append(f"{scope.path}.{target}")
        scope = scope.parent
    candidates.append(target)
    for path in candidates:
        found = _lookup(loader, path)
        if found is not None and found.is_module and role not in ("mod", "obj"):
            # a function named like its module (align.levenshtein.levenshtein)
            found = _lookup(loader, f"{found.path}.{target.rsplit('.', 1)[-1]}")
        if found is not None:
            return found
    # a name exported lazily by a package (module __getattr__): look in its submodules
    prefix, _, name = target.rpartition(".")
    package = _lookup(loader, prefix) if prefix else None
    if package is not None and package.is_module:
        for sub in package.modules.values():
            member = sub.members.get(name)
            if member is not None and not member.is_alias:
                return member
    return None
