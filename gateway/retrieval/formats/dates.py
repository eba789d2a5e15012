"""Normalise the many ways documents state a date to an ISO 8601 date (YYYY-MM-DD)."""

from __future__ import annotations

import datetime as dt
import re

_ISO_PREFIX = re.compile(r"^\s*(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")
_PDF_DATE = re.compile(r"^\s*(?:D:)?(\d{4})(\d{2})?(\d{2})?")


def to_iso_date(value: object) -> str | None:
    """Best-effort conversion; None when the value does not name a real calendar date."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        return None
    m = _ISO_PREFIX.match(value)
    if m is None:
        # PDF metadata dates look like "D:20240301120000+01'00'".
        m = _PDF_DATE.match(value)
        if m is None:
            return None
    year, month, day = (int(g) if g else 1 for g in m.groups())
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return None
