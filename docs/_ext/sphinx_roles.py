"""A griffe extension: the package's Sphinx roles (``:class:`X```) rendered for mkdocstrings.

The docstrings are written in Sphinx style, which ``help()`` and IDEs read as they are, but
mkdocstrings prints a role as raw text (``:class:`ScriptSpec```). Each role becomes a
cross-reference to the object's section when the site documents that object (an entry of a
``:::`` block in docs/ or one of its public, documented members), and plain code otherwise
(``ValueError``, a private helper). tests/test_docs.py fails on any raw role left in the site.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe

DOCS = Path(__file__).resolve().parent.parent
PACKAGE = "pytest_codomyrmex_exec"
# :class:`Name`, :py:meth:`~.module.Name`, :func:`title <target>`
ROLE = re.compile(r":(?:py:)?[a-z]+:`(?:([^`<]*?)\s*<([^`>]+)>|([^`]+))`")
DIRECTIVE = re.compile(rf"^:::\s+({re.escape(PACKAGE)}[\w.]*)", re.M)


def _documented_roots() -> list[str]:
    """The objects the site renders with a ``:::`` block."""
    return [
        match.group(1)
        for page in sorted(DOCS.glob("*.md"))
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8"))
    ]


def _shown(obj: griffe.Object) -> Iterator[str]:
    """``obj`` and what mkdocstrings renders under it: public members with a docstring."""
    yield obj.path
    for name, member in obj.members.items():
        if member.is_alias or name.startswith("_"):
            continue
        if member.docstring is not None or member.is_class:
            yield from _shown(member)


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class SphinxRoles(griffe.Extension):
    """Rewrites every Sphinx role of the package's docstrings once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        shown: set[str] = set()
        for root in _documented_roots():
            target = loader.modules_collection.get_member(root)
            shown.update(_shown(target.final_target if target.is_alias else target))
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(
                    lambda match, owner=obj: self._render(match, owner, loader, shown),
                    obj.docstring.value,
                )

    @staticmethod
    def _render(
        match: re.Match[str], owner: griffe.Object, loader: griffe.GriffeLoader, shown: set[str]
    ) -> str:
        title, explicit, bare = match.groups()
        reference = (explicit or bare).strip()
        name = reference.lstrip("~")
        if title:
            text = title
        elif reference.startswith("~"):
            text = name.rsplit(".", 1)[-1]
        else:
            text = name.lstrip(".")
        path = _resolve(name, owner, loader)
        if path in shown:
            return f"[`{text}`][{path}]"
        return f"`{text}`"


def _resolve(name: str, owner: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
    """The canonical path ``name`` means in ``owner``'s docstring, or ``None``."""
    if name.startswith("."):  # relative to the owner's package, as Sphinx reads ".launch.x"
        package = owner.module.parent
        candidate = f"{package.path if package else ''}{name}"
    else:
        first, _, rest = name.partition(".")
        try:
            candidate = owner.resolve(first) + (f".{rest}" if rest else "")
        except griffe.NameResolutionError:
            candidate = name
    try:
        found = loader.modules_collection.get_member(candidate)
    except (KeyError, ValueError, griffe.AliasResolutionError):
        return None
    try:
        return str(found.final_target.path if found.is_alias else found.path)
    except griffe.AliasResolutionError:
        return None
