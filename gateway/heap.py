"""Giving freed heap back to the operating system, where the allocator would keep it."""

from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """Hand freed heap back to the OS: glibc keeps it per thread arena otherwise (an ingest's parsed
    documents and embedding batches, a tokenizer's load-time tables, would stay in RSS for good)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        pass
