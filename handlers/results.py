"""Result documents and their writers: strict RTTM, versioned JSON, status and error sidecars.

Everything a person on the share can see is written atomically (temporary name in the same folder,
fsync, rename), so the outbox only ever holds complete files or none.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diarist.handlers.crashpoints import crash_point
from diarist.handlers.engine import Centroids, Region, Segment
from diarist.handlers.exports import EXTENSIONS, label_names, render
from diarist.handlers.transcribe import Transcript
from diarist.policies.names import output_stem, within

#: minor versions add optional fields: 1.1 adds ``centroids``, 1.2 ``turns``, ``transcript`` and
#: ``transcription`` (task transcribe). Readers accept every 1.x.
SCHEMA = "diarist.result/1.2"
SCHEMA_MAJOR = "diarist.result/1"
CENTROID_ENCODING = "base64-float32-le"
#: the name ending of ``atomic_write``'s temporaries (hidden: they also start with a dot)
TEMPORARY_SUFFIX = ".diarist-tmp"
STATUS_SCHEMA = "diarist.status/1"
ERROR_SCHEMA = "diarist.error/1"
# files diarist writes are readable by the team, never world-writable
FILE_MODE = 0o644


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file, or the new one complete, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def sweep_temporaries(folder: Path, older_than: float) -> int:
    """Remove ``atomic_write``'s temporaries under ``folder`` last touched before ``older_than`` (epoch
    seconds): a process killed mid-write leaves one behind. Younger ones may be another host's write in
    progress. Returns how many went."""
    removed = 0
    for tmp in folder.rglob(f".*{TEMPORARY_SUFFIX}") if folder.is_dir() else ():
        try:
            if tmp.is_file() and tmp.stat().st_mtime < older_than:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some network filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def rttm_uri(name: str) -> str:
    """RTTM fields are space-separated: the uri may not contain whitespace."""
    return re.sub(r"\s+", "_", name) or "audio"


def to_rttm(uri: str, segments: Iterable[Segment]) -> str:
    uri = rttm_uri(uri)
    return "".join(
        # round both ends first so that start + duration reads back as the same end
        f"SPEAKER {uri} 1 {round(s.start, 3):.3f} {round(s.end, 3) - round(s.start, 3):.3f} "
        f"<NA> <NA> {s.speaker} <NA> <NA>\n"
        for s in segments
    )


def parse_rttm(text: str) -> tuple[str | None, list[Segment]]:
    """Parse strict 10-field RTTM; raises ``ValueError`` naming the bad line."""
    uri = None
    segments = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 10 or fields[0] != "SPEAKER":
            raise ValueError(f"RTTM line {number}: expected 10 fields starting with SPEAKER: {line!r}")
        uri = fields[1]
        start, duration = float(fields[3]), float(fields[4])
        segments.append(Segment(round(start, 3), round(start + duration, 3), fields[7]))
    return uri, segments


@dataclass(frozen=True)
class SourceFacts:
    name: str
    relative_path: str
    sha256: str
    size: int
    duration: float
    sample_rate: int
    channels: int


def speaker_totals(segments: Iterable[Segment]) -> list[dict[str, Any]]:
    totals: dict[str, float] = {}
    for s in segments:
        totals[s.speaker] = totals.get(s.speaker, 0.0) + (s.end - s.start)
    return [{"label": k, "speech_seconds": round(v, 3)} for k, v in sorted(totals.items())]


def build_result(
    *,
    source: SourceFacts,
    task: str,
    engine: dict[str, Any],
    route: dict[str, Any],
    timings: dict[str, float],
    segments: tuple[Segment, ...],
    exclusive_segments: tuple[Segment, ...],
    vad: tuple[Region, ...] | None,
    overlap: tuple[Region, ...] | None,
    speakers_requested: dict[str, int] | None = None,
    centroids: Centroids | None = None,
    transcript: Transcript | None = None,
) -> dict[str, Any]:
    """The ``diarist.result/1.x`` document (README: "What lands in the outbox")."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "source": vars(source).copy(),
        "task": task,
        "engine": engine,
        "route": route,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "speakers": speaker_totals(segments),
        "segments": [vars(s).copy() for s in segments],
        "exclusive_segments": [vars(s).copy() for s in exclusive_segments],
    }
    if speakers_requested:
        doc["speakers_requested"] = dict(speakers_requested)
        note = speakers_note(speakers_requested, len(doc["speakers"]))
        if note:
            doc["speakers_note"] = note
    if vad is not None:
        doc["vad"] = [vars(r).copy() for r in vad]
    if overlap is not None:
        doc["overlap"] = [vars(r).copy() for r in overlap]
    if centroids is not None:
        doc["centroids"] = centroids_document(centroids)
    if transcript is not None:
        doc["transcription"] = {"model": transcript.model, "language": transcript.language}
        doc["turns"] = [vars(t).copy() for t in transcript.turns]
        doc["transcript"] = transcript.text()
    return doc


def speakers_note(requested: dict[str, int], found: int) -> str | None:
    """Why a result has fewer speakers than asked for: the engine adds a speaker only for a voice unlike every
    one it found, never by splitting a voice (README: Models, speaker counts)."""
    wanted = requested.get("num_speakers") or requested.get("min_speakers")
    if not wanted or found >= wanted or found == 0:
        return None
    return f"asked for {wanted} speakers; {found} distinct voice{'s' if found != 1 else ''} found"


def vector_text(vector: Any) -> str:
    """An embedding as text (``CENTROID_ENCODING``: base64 of little-endian float32), for JSON and the ledger."""
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def text_vector(text: str) -> Any:
    """The numpy float32 vector of ``vector_text``'s text."""
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def centroids_document(centroids: Centroids) -> dict[str, Any]:
    """``{"model", "dimension", "encoding", "speakers": {label: base64 of little-endian float32}}``."""
    return {
        "model": centroids.model,
        "dimension": len(centroids.vectors[0][1]),
        "encoding": CENTROID_ENCODING,
        "speakers": {label: vector_text(v) for label, v in centroids.vectors},
    }


def read_centroids(doc: dict[str, Any]) -> dict[str, Any]:
    """A result document's centroids as ``{label: numpy float32 vector}`` (empty when it has none)."""
    block = doc.get("centroids")
    if not block:
        return {}
    if block.get("encoding") != CENTROID_ENCODING:
        raise ValueError(f"centroids.encoding: expected {CENTROID_ENCODING!r}, got {block.get('encoding')!r}")
    return {k: text_vector(v) for k, v in block["speakers"].items()}


def foreign_outputs(paths: OutputPaths, formats: Iterable[str] = ()) -> list[Path]:
    """Outputs at ``paths`` that exist although no diarist result lies there: writing would destroy files a
    person (or another tool) made, such as a reference ``.rttm`` beside a recording."""
    try:
        read_result(paths.json)
        return []  # diarist's own earlier result: running again replaces it
    except (OSError, ValueError):
        pass
    wanted = [paths.rttm, paths.json, *(paths.export(f) for f in formats)]
    return [p for p in wanted if p.exists()]


def read_result(path: Path) -> dict[str, Any]:
    """A result JSON file, checked (``ValueError`` names what is wrong; ``OSError`` when unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from e
    return validate_result(doc)


def validate_result(doc: Any) -> dict[str, Any]:
    """Check a parsed result document's shape; raises ``ValueError`` with the offending field."""
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not (isinstance(schema, str) and (schema == SCHEMA_MAJOR or schema.startswith(SCHEMA_MAJOR + "."))):
        raise ValueError(f"not a {SCHEMA_MAJOR} document")
    for key, kind in (
        ("source", dict),
        ("task", str),
        ("engine", dict),
        ("route", dict),
        ("timings", dict),
        ("speakers", list),
        ("segments", list),
        ("exclusive_segments", list),
    ):
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"field {key!r} missing or not a {kind.__name__}")
    for key in ("name", "relative_path", "sha256", "duration", "sample_rate"):
        if key not in doc["source"]:
            raise ValueError(f"field source.{key} missing")
    if "centroids" in doc:
        block = doc["centroids"]
        if not (isinstance(block, dict) and isinstance(block.get("speakers"), dict) and "model" in block):
            raise ValueError("field 'centroids' must hold model and speakers")
    if "turns" in doc and not (
        isinstance(doc["turns"], list)
        and all(isinstance(t, dict) and isinstance(t.get("text"), str) for t in doc["turns"])
        and isinstance(doc.get("transcript"), str)
    ):
        raise ValueError("field 'turns' must be a list of turns with text, beside a 'transcript' string")
    for seg in doc["segments"] + doc.get("turns", []) + doc["exclusive_segments"]:
        ok = isinstance(seg, dict) and {"start", "end", "speaker"} <= set(seg)
        numbers = ok and all(isinstance(seg[k], int | float) and not isinstance(seg[k], bool) for k in ("start", "end"))
        if not (numbers and seg["end"] >= seg["start"]):
            raise ValueError(f"bad segment {seg!r}")
    return doc


def segments_from_result(doc: dict[str, Any]) -> list[Segment]:
    return [Segment(float(s["start"]), float(s["end"]), str(s["speaker"])) for s in doc["segments"]]


@dataclass(frozen=True)
class OutputPaths:
    """Where the outputs for one input land: the outbox mirrors the inbox's sub-folders."""

    rttm: Path
    json: Path
    status: Path
    error: Path

    def export(self, fmt: str) -> Path:
        """Where format ``fmt`` (``exports.FORMATS``) of this result lands: ``<stem>.<extension>``."""
        return self.json.with_name(self.json.name.removesuffix(".json") + "." + EXTENSIONS[fmt])

    @classmethod
    def for_input(cls, outbox: Path, relative_path: str) -> OutputPaths:
        """Outputs named after the input (made storable on any share; see ``policies.names``)."""
        return cls.for_stem(outbox, output_stem(relative_path))

    @classmethod
    def for_stem(cls, outbox: Path, stem_path: str) -> OutputPaths:
        """Outputs at ``outbox/<stem_path>.*`` (``stem_path`` is ``/``-separated, from ``reserve_stem``)."""
        stem = within(outbox, stem_path)
        return cls(
            rttm=stem.with_name(stem.name + ".rttm"),
            json=stem.with_name(stem.name + ".json"),
            status=stem.with_name(stem.name + ".status.json"),
            error=stem.with_name(stem.name + ".error.json"),
        )


def iso(ts: float) -> str:
    """A wall-clock time as the documents and events write it (UTC, whole seconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def rttm_of(doc: dict[str, Any]) -> str:
    """The RTTM text of a result document (uri: the file name without its extension; labels: the identified
    names when the result says names are the labels)."""
    names = {label: "_".join(name.split()) for label, name in label_names(doc).items()}  # one RTTM field
    segments = [Segment(s.start, s.end, names.get(s.speaker, s.speaker)) for s in segments_from_result(doc)]
    return to_rttm(doc["source"]["name"].rsplit(".", 1)[0], segments)


def write_result(paths: OutputPaths, doc: dict[str, Any], formats: Iterable[str] = ()) -> None:
    """RTTM first, the asked-for formats (``exports``), JSON last: a present JSON means everything beside it
    is complete too."""
    atomic_write(paths.rttm, rttm_of(doc).encode("utf-8"))
    crash_point("result_rttm")
    for fmt in formats:
        atomic_write(paths.export(fmt), render(doc, fmt))
    atomic_write(paths.json, dumps(doc))
    remove_quietly(paths.status)
    remove_quietly(paths.error)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def error_document(
    *,
    file: str,
    kind: str,
    message: str,
    hint: str | None,
    moved_to: str | None,
    at: str,
    sha256: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": ERROR_SCHEMA,
        "file": file,
        "kind": kind,
        "error": message,
        "what_to_do": hint or "check the file and drop it again",
        "failed_at": at,
    }
    if moved_to:
        doc["input_moved_to"] = moved_to
    if sha256:
        doc["sha256"] = sha256
    if details:
        doc["details"] = details
    return doc


def status_document(
    *,
    file: str,
    state: str,
    engine: str | None,
    progress: float | None,
    step: str | None,
    updated_at: str,
    host: str,
    note: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "file": file,
        "state": state,
        "engine": engine,
        "progress": None if progress is None else round(progress, 3),
        "step": step,
        "updated_at": updated_at,
        "host": host,
    }
    if note:
        doc["note"] = note
    return doc
