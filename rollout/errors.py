"""One-line error text: what every user-facing message built from a caught exception shows of it."""

from __future__ import annotations


def first_line(error: BaseException, with_type: bool = False) -> str:
    """The first non-empty line of the error's message (the type's name when it has none); with_type prefixes
    `TypeName: `. Library tracebacks run to dozens of lines; a CLI error is one."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    if with_type:
        return f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line or type(error).__name__
