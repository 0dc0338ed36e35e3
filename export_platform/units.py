"""Numbers as people read them."""

from __future__ import annotations


def human_bytes(size: int) -> str:
    """1,536 → '1.5 KiB'; sizes below 1 KiB stay in bytes."""
    if size < 1024:
        return f"{size:,} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
