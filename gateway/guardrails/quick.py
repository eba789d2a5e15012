"""Pre-tests the detectors share: cheap ways to know a pattern cannot match before trying it."""

from __future__ import annotations

import re

ANY_DIGIT = re.compile(r"\d")
ASCII_DIGITS = "0123456789"


def has_digit(text: str) -> bool:
    """What `\\d` finds. ASCII text (the usual prompt) is tested with `in` per digit, a memchr-speed
    scan, ~5x faster than the Unicode-aware regex trying each position."""
    if text.isascii():
        for digit in ASCII_DIGITS:  # a plain loop: a generator's frame costs more than the tests
            if digit in text:
                return True
        return False
    return ANY_DIGIT.search(text) is not None
