"""structlog set-up: JSON lines when stderr is not a terminal (journald, files), readable colours otherwise.

Under journald (stderr is the stream ``$JOURNAL_STREAM`` names) each JSON line starts with its syslog
priority, ``<3>`` for errors, ``<4>`` warnings, ``<6>`` info, ``<7>`` debug: journald takes the prefix off and
files the line under that priority (``journalctl -p warning -u diarist`` shows failures), and the message it
keeps is the JSON line as it was.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

#: syslog priorities (sd-daemon(3)) of structlog's levels
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def journald_stream(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to journald: ``$JOURNAL_STREAM`` is ``device:inode`` of that very
    stream (a child whose output was redirected elsewhere inherits the variable, but not the stream)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return device.isdigit() and inode.isdigit() and (st.st_dev, st.st_ino) == (int(device), int(inode))


class PriorityPrefix:
    """Renders with ``renderer``, then puts the line's ``<priority>`` in front."""

    def __init__(self, renderer: Any):
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        priority = PRIORITIES.get(str(event_dict.get("level", name)), 6)
        return f"<{priority}>{self.renderer(logger, name, event_dict)}"


def configure(fmt: str = "auto", level: str = "info") -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    if json_lines and journald_stream(sys.stderr):
        renderer = PriorityPrefix(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
