"""Names in generated code, shared by the backends."""

from __future__ import annotations

from collections.abc import Callable


def fresh_name(base: str | None, taken: set[str], identifier: Callable[[str], str]) -> str:
    """An unused name, added to `taken`: `base` made an identifier of the target language (numbered
    if taken), else v0, v1, ..."""
    if base:
        base = identifier(base)
        name, n = base, 1
        while name in taken:
            name, n = f"{base}_{n}", n + 1
    else:
        n = 0
        while f"v{n}" in taken:
            n += 1
        name = f"v{n}"
    taken.add(name)
    return name
