"""The README as the tests read it: its sections, its fenced blocks, its Vault policy."""

from __future__ import annotations

import re

from tests.support.migration_fixtures import ROOT

__all__ = ["README", "blocks", "readme_policy", "section"]

README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README from heading ``title`` to the next heading."""
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start : end if end != -1 else None]


def blocks(text: str, lang: str = "") -> list[str]:
    """The fenced code blocks of ``text`` in language ``lang`` (any unlabelled one for "")."""
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def readme_policy(mount: str) -> str:
    """The README's Vault policy, on ``mount`` instead of ``transit``."""
    (block,) = blocks(section("### Vault policy"), "hcl")
    return block.replace('path "transit/', f'path "{mount}/')
