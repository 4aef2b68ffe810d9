"""Text for a terminal: names and messages from repositories and file systems shown safely, sizes
for people."""

from __future__ import annotations

import logging


def escape(text: str) -> str:
    """``text`` with each unprintable character (C0/C1 controls, DEL, bidi and other format
    characters, undecodable bytes) as its Python escape, e.g. ``\\n``, ``\\x1b``, ``\\u202e``."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quote_name(name: str) -> str:
    """A path or name from a repository as listed on a terminal: as it is when printable, otherwise
    (or when it holds a quote or a backslash) as a Python string literal, e.g. ``'a\\nb'``. So a
    listing is one line per entry, never carries terminal escapes, and a quoted name cannot pass for
    a plain one. ``--json`` output keeps exact names."""
    return name if name.isprintable() and "'" not in name and '"' not in name and "\\" not in name else repr(name)


class EscapingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
