"""Small wording rules the studio's texts share."""

from __future__ import annotations


def plural(n: int, noun: str) -> str:
    """ "1 object", "2 objects"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
