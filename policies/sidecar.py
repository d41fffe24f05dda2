"""Per-file settings from a sidecar JSON (``meeting.wav.diarist.json`` or ``meeting.diarist.json``).

The document is small and strict: every key is optional, unknown keys are errors (a typo must not silently
change nothing), and each error names the key, the bad value and what is allowed::

    {"version": 1, "route": "cloud", "flavor": "a10g-small", "priority": "speed", "task": "full",
     "speakers": {"min": 2, "max": 4}, "user": "alice", "language": "en"}

Speaker counts may be given flat (``num_speakers``, ``min_speakers``, ``max_speakers``, as in the inbox
configuration) or nested under ``speakers`` (``num``, ``min``, ``max``). Reading the file is the daemon's job;
this module only decides what a decoded document means.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from .flavor import Priority, Task
from .formats import parse_formats
from .pricing import FALLBACK_PRICES, JOB_FLAVORS
from .route import FileOverride, RouteSetting

SIDECAR_SUFFIX = ".diarist.json"
SIDECAR_VERSION = 1
FLAVOR_PATTERN = re.compile(r"[a-z0-9-]+")
MAX_FLAVOR_LENGTH = 40
MAX_USER_LENGTH = 100

_COUNT_KEYS = ("num_speakers", "min_speakers", "max_speakers")
# Nested spelling -> flat key.
_NESTED_COUNT_KEYS = {"num": "num_speakers", "min": "min_speakers", "max": "max_speakers"}
_TOP_KEYS = frozenset(
    {"version", "route", "flavor", "priority", "task", "user", "speakers", "language", "formats", *_COUNT_KEYS}
)
#: an ISO 639-1 (or -3) language code, as speech recognisers name languages
LANGUAGE_PATTERN = re.compile(r"[a-z]{2,3}")
_ENUMS: dict[str, type[Enum]] = {"route": RouteSetting, "priority": Priority, "task": Task}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SidecarError(ValueError):
    """A sidecar document that diarist refuses.

    ``field`` is the dotted key at fault (``"route"``, ``"speakers.min"``), or None when the document as a
    whole is wrong (not JSON, not an object); ``message`` is written for the person who wrote the file.
    """

    def __init__(self, field: str | None, message: str):
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass(frozen=True)
class FileRequest:
    """What one file's sidecar asks for; None fields leave the choice to the inbox and the daemon."""

    route: RouteSetting | None = None
    flavor: str | None = None
    priority: Priority | None = None
    task: Task | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    user: str | None = None
    #: the spoken language, for ``task = "transcribe"``
    language: str | None = None
    #: result formats beyond RTTM and JSON (``policies.formats``)
    formats: tuple[str, ...] | None = None

    def as_override(self) -> FileOverride:
        """The routing part, for ``decide_route``."""
        return FileOverride(route=self.route, flavor=self.flavor, priority=self.priority, task=self.task)

    def speakers(self) -> dict[str, int]:
        """The speaker counts that are set, keyed like pyannote's arguments (``num_speakers``, ...)."""
        return {k: v for k in _COUNT_KEYS if (v := getattr(self, k)) is not None}

    def to_json(self) -> dict[str, Any]:
        """The set fields only, flat keys, enums as their string values (for the ledger and status files)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = (
                    value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
                )
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRequest:
        """Inverse of ``to_json`` for trusted input (the ledger); user documents go through ``parse_sidecar``.

        Raises ``ValueError`` on a key ``to_json`` does not write or an unknown enum value.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FileRequest field(s): {', '.join(unknown)}")
        values = dict(data)
        if values.get("formats") is not None:
            values["formats"] = tuple(values["formats"])
        for key, enum in _ENUMS.items():
            if values.get(key) is not None:
                values[key] = enum(values[key])
        return cls(**values)


def sidecar_names(audio_name: str) -> tuple[str, ...]:
    """Sidecar names to look for next to ``audio_name``, first match wins.

    ``"meeting.wav"`` gives ``("meeting.wav.diarist.json", "meeting.diarist.json")``; a name without an
    extension (or a dot file such as ``".wav"``) gives only the first. A directory part, if any, is kept.
    """
    head, sep, base = audio_name.rpartition("/")
    names = [f"{audio_name}{SIDECAR_SUFFIX}"]
    dot = base.rfind(".")
    if dot > 0:
        names.append(f"{head}{sep}{base[:dot]}{SIDECAR_SUFFIX}")
    return tuple(names)


def _describe(value: object) -> str:
    """A short JSON-flavoured rendering of a bad value for messages; never huge, never raises."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Very long ints cannot even be converted to text (sys.int_info.str_digits_check_threshold).
        return str(value) if value.bit_length() <= 64 else "a very large number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else f"{text[:56]}...{text[0]}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _suggest(key: str, allowed: list[str]) -> str | None:
    # A shared prefix ("minimum" -> "min", "speaker" -> "speakers") says more than overall similarity.
    lowered = key.lower()
    prefixed = [a for a in allowed if lowered.startswith(a) or (len(lowered) >= 3 and a.startswith(lowered))]
    if prefixed:
        return max(prefixed, key=len)
    close = difflib.get_close_matches(lowered, allowed, n=1)
    return close[0] if close else None


def _unknown_keys(table: dict[Any, Any], allowed: frozenset[str] | set[str], prefix: str) -> None:
    unknown = sorted((k for k in table if k not in allowed), key=str)
    if not unknown:
        return
    first = unknown[0]
    shown = ", ".join(repr(k) if isinstance(k, str) else _describe(k) for k in unknown)
    guess = _suggest(first, sorted(allowed)) if isinstance(first, str) else None
    hint = f" (did you mean {guess!r}?)" if guess else ""
    field = f"{prefix}{first}" if isinstance(first, str) else prefix.rstrip(".") or None
    raise SidecarError(field, f"unknown key {shown}{hint}; allowed keys: {', '.join(sorted(allowed))}")


def _choice(field: str, value: object, enum: type[Enum]) -> Any:
    options = ", ".join(repr(m.value) for m in enum)
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    raise SidecarError(field, f"must be one of {options}, got {_describe(value)}")


def _flavor(value: object) -> str:
    if isinstance(value, str) and len(value) <= MAX_FLAVOR_LENGTH and FLAVOR_PATTERN.fullmatch(value):
        if value in JOB_FLAVORS:
            return value
        raise SidecarError("flavor", f"must be one of {', '.join(JOB_FLAVORS)}; got {value!r}")
    examples = ", ".join(repr(p.name) for p in FALLBACK_PRICES)
    raise SidecarError(
        "flavor",
        f"must be a Hugging Face Jobs hardware flavor name such as {examples}"
        f" (lowercase letters, digits and '-', at most {MAX_FLAVOR_LENGTH} characters), got {_describe(value)}",
    )


def _user(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        problem = "empty" if isinstance(value, str) else _describe(value)
        raise SidecarError("user", f"must be a non-empty name of at most {MAX_USER_LENGTH} characters, got {problem}")
    if len(value) > MAX_USER_LENGTH:
        raise SidecarError("user", f"must be at most {MAX_USER_LENGTH} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise SidecarError("user", f"must be a single line without control characters, got {_describe(value)}")
    return value


def language_problem(value: object) -> str | None:
    """Why ``value`` is not a language code diarist takes, or None (shared with the configuration)."""
    if isinstance(value, str) and LANGUAGE_PATTERN.fullmatch(value):
        return None
    return f'must be a lowercase ISO 639-1 language code such as "en", "de" or "fr", got {_describe(value)}'


def _count(field: str, value: object) -> int:
    # bool is an int in Python, and JSON's 2.0 is a float: neither is a speaker count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SidecarError(field, f"must be a positive integer (1, 2, 3, ...), got {_describe(value)}")
    return value


def _speaker_counts(doc: dict[Any, Any]) -> dict[str, tuple[int, str]]:
    """Flat key -> (count, key as the user spelled it), merging both spellings."""
    counts = {k: (_count(k, doc[k]), k) for k in _COUNT_KEYS if k in doc}
    if "speakers" not in doc:
        return counts
    nested = doc["speakers"]
    if not isinstance(nested, dict):
        raise SidecarError("speakers", f'must be an object such as {{"min": 2, "max": 4}}, got {_describe(nested)}')
    _unknown_keys(nested, set(_NESTED_COUNT_KEYS), "speakers.")
    for short, flat in _NESTED_COUNT_KEYS.items():
        if short not in nested:
            continue
        field = f"speakers.{short}"
        value = _count(field, nested[short])
        if flat in counts and counts[flat][0] != value:
            raise SidecarError(field, f"is {value} but {flat} is {counts[flat][0]}; give each speaker count once")
        counts.setdefault(flat, (value, field))
    return counts


def parse_sidecar(data: object) -> FileRequest:
    """Validate a decoded sidecar document and return what it asks for.

    Raises ``SidecarError`` naming the key, the bad value and the allowed values: on a non-object document,
    an unknown key, a ``version`` other than 1, a bad value, a speaker count given differently in both
    spellings, ``num_speakers`` together with ``min_speakers``/``max_speakers``, or ``min > max``.
    """
    if not isinstance(data, dict):
        raise SidecarError(None, f'a sidecar must be a JSON object such as {{"route": "cloud"}}, got {_describe(data)}')
    _unknown_keys(data, _TOP_KEYS, "")
    if "version" in data:
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != SIDECAR_VERSION:
            raise SidecarError(
                "version", f"must be {SIDECAR_VERSION} (the only version supported), got {_describe(version)}"
            )

    values: dict[str, Any] = {key: _choice(key, data[key], enum) for key, enum in _ENUMS.items() if key in data}
    if "flavor" in data:
        values["flavor"] = _flavor(data["flavor"])
    if "user" in data:
        values["user"] = _user(data["user"])
    if "language" in data:
        problem = language_problem(data["language"])
        if problem:
            raise SidecarError("language", problem)
        values["language"] = data["language"]
    if "formats" in data:
        if not isinstance(data["formats"], list):
            raise SidecarError(
                "formats", f'must be a list such as ["srt", "textgrid"], got {_describe(data["formats"])}'
            )
        values["formats"], problem = parse_formats(data["formats"])
        if problem:
            raise SidecarError("formats", problem)

    counts = _speaker_counts(data)
    if "num_speakers" in counts and ("min_speakers" in counts or "max_speakers" in counts):
        other = counts["min_speakers" if "min_speakers" in counts else "max_speakers"][1]
        raise SidecarError(
            counts["num_speakers"][1],
            f"cannot be combined with {other}: give either an exact count (num) or a range (min and/or max)",
        )
    if "min_speakers" in counts and "max_speakers" in counts:
        (low, low_field), (high, high_field) = counts["min_speakers"], counts["max_speakers"]
        if low > high:
            raise SidecarError(low_field, f"must not be larger than {high_field} ({low} > {high})")
    values.update({flat: value for flat, (value, _) in counts.items()})
    return FileRequest(**values)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise SidecarError(key, "is given twice; keep one")
        seen[key] = value
    return seen


def parse_sidecar_text(text: str) -> FileRequest:
    """Decode a sidecar file's text and validate it with ``parse_sidecar``.

    A leading byte-order mark (Windows Notepad) is ignored; a key repeated within one object is an error,
    since JSON would silently keep only the last. Raises ``SidecarError``; a decoding problem has no field
    and says ``not valid JSON: ... line X column Y``.
    """
    try:
        data = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise SidecarError(None, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except SidecarError:
        raise
    except ValueError as e:
        # Python refuses to convert integers of thousands of digits.
        raise SidecarError(None, "not valid JSON for diarist: a number is too long") from e
    except RecursionError as e:
        raise SidecarError(None, "not valid JSON for diarist: nested too deeply") from e
    return parse_sidecar(data)
