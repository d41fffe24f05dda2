"""Which result formats a file asks for (the renderers are ``handlers.exports``; RTTM and JSON are always
written)."""

from __future__ import annotations

from collections.abc import Iterable

EXPORT_FORMATS = ("srt", "vtt", "textgrid", "eaf", "audacity", "csv")
ALWAYS = ("rttm", "json")


def format_args(values: Iterable[str]) -> list[str]:
    """Format names as given on a command line: ``--format srt --format vtt,csv``, blanks dropped."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def parse_formats(values: Iterable[object]) -> tuple[tuple[str, ...], str | None]:
    """``(formats to render, problem)``: the known names in the order given, without duplicates and without
    the always-written ones; ``problem`` names the first unknown one and the choices (None when all are known)."""
    chosen: list[str] = []
    for value in values:
        if not isinstance(value, str) or value.lower() not in EXPORT_FORMATS + ALWAYS:
            shown = repr(value) if isinstance(value, str) else type(value).__name__
            return (), f"unknown format {shown}; choose from {', '.join(ALWAYS + EXPORT_FORMATS)}"
        name = value.lower()
        if name in EXPORT_FORMATS and name not in chosen:
            chosen.append(name)
    return tuple(chosen), None
