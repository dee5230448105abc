"""A griffe extension for the API reference: turn the Sphinx roles of phalanx_aio's docstrings
(``:class:`Ready```, ``:meth:`~phalanx_aio.storage.Storage.save```) into links.

The docstrings are written for Python readers first, in reStructuredText roles; mkdocstrings
renders Markdown. Each role becomes an *optional* mkdocs-autorefs reference to the name
resolved in the docstring's own scope: a link where the target is documented, plain code
where it is not (an optional reference never fails the strict build).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|exc|data|obj|const):`(?P<target>[^`]+)`")


def _identifier(obj: griffe.Object, target: str) -> str | None:
    """The full dotted path ``target`` names as seen from ``obj``, or None if unknown."""
    if target.startswith("phalanx_aio"):
        return target
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            found = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            found = None
        if found:
            return f"{found}.{rest}" if rest else found
        scope = scope.parent
    return None


def _rewrite(obj: griffe.Object, text: str) -> str:
    def one(match: re.Match[str]) -> str:
        target = match.group("target").strip()
        if "<" in target and target.endswith(">"):  # :class:`title <target>`
            title, _, target = target[:-1].partition("<")
            title, target = title.strip(), target.strip()
        else:
            short = target.startswith("~")
            target = target.lstrip("~.")
            title = target.rsplit(".", 1)[-1] if short else target
        code = f"<code>{html.escape(title)}</code>"
        ident = _identifier(obj, target)
        if ident is None:
            return code
        return f'<autoref identifier="{html.escape(ident)}" optional>{code}</autoref>'

    return _ROLE.sub(one, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles in every docstring once the tree is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place."""
        doc = obj.docstring
        if doc is not None and ":" in doc.value:
            doc.value = _rewrite(obj, doc.value)
