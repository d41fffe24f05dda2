"""Recordings sent to ``POST /v1/files``: the body streamed to this host's uploads folder (never whole in
memory, hashed on the way), checked, then handed to the intake, which claims it like a dropped file.

Whatever is refused leaves nothing behind: the staged copy is removed before the answer goes out.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from diarist.handlers.audio import probe
from diarist.handlers.errors import PermanentFileError, RequestError, ToolMissingError
from diarist.policies.formats import format_args
from diarist.policies.intake import AUDIO_EXTENSIONS, ignore_reason
from diarist.policies.names import is_text
from diarist.policies.sidecar import FileRequest, SidecarError, parse_sidecar

#: the part of a staged upload's name that marks it as one (swept at start: a crash mid-upload)
STAGED_SUFFIX = ".upload"
#: longest accepted file name, in bytes (most filesystems stop at 255; outputs add suffixes)
MAX_NAME_BYTES = 200
#: the sidecar keys an upload takes as query parameters; force_cloud is the seed API's spelling of route=cloud
COUNT_OPTIONS = ("num_speakers", "min_speakers", "max_speakers")
TEXT_OPTIONS = ("route", "priority", "flavor", "task", "user", "language")


@dataclass(frozen=True)
class Received:
    staged: Path
    sha256: str
    size: int


def upload_name(raw: str | None) -> str:
    """The recording's name as given (``?name=``), if it is one plain audio file name."""
    hint = "pass the recording's own file name, e.g. ?name=meeting.wav"
    if not raw:
        raise RequestError(400, "the upload has no name", hint=hint)
    if "/" in raw or "\\" in raw or "\x00" in raw or raw in (".", "..") or raw.startswith("."):
        raise RequestError(400, f"{raw!r} is not a plain file name (no folders, no leading dot)", hint=hint)
    if not is_text(raw) or not raw.isprintable():
        raise RequestError(400, "the name holds characters that cannot be stored as they are", hint=hint)
    if len(raw.encode("utf-8")) > MAX_NAME_BYTES:
        raise RequestError(400, f"the name is longer than {MAX_NAME_BYTES} bytes", hint="shorten it")
    ext = os.path.splitext(raw)[1].lower()
    if ext not in AUDIO_EXTENSIONS:
        raise RequestError(
            415,
            f"{raw!r} does not have an audio file extension ({ext or 'none'})",
            hint=f"send audio: {', '.join(sorted(AUDIO_EXTENSIONS))}",
        )
    reason = ignore_reason(raw)
    if reason is not None:
        raise RequestError(400, f"{raw!r} is a name diarist never takes: {reason}", hint=hint)
    return raw


def upload_request(query: Mapping[str, str | None]) -> FileRequest | None:
    """The query's options, checked exactly as a sidecar's (same keys, same messages)."""
    doc: dict[str, object] = {k: v for k in TEXT_OPTIONS if (v := query.get(k)) is not None}
    force = (query.get("force_cloud") or "").lower()
    if force in ("1", "true", "yes"):
        doc["route"] = "cloud"
    elif force not in ("", "0", "false", "no"):
        raise RequestError(422, f"force_cloud must be true or false, got {force!r}")
    for key in COUNT_OPTIONS:
        value = query.get(key)
        if value is not None:
            doc[key] = int(value) if value.isascii() and value.isdigit() else value
    if query.get("formats"):
        doc["formats"] = format_args([query["formats"] or ""])
    if not doc:
        return None
    try:
        return parse_sidecar(doc)
    except SidecarError as e:
        raise RequestError(422, str(e), hint="the options are a sidecar's keys (README: per-file settings)") from None


async def receive(
    chunks: AsyncIterator[bytes], folder: Path, *, limit: int, declared: int | None, name: str
) -> Received:
    """Stream ``chunks`` into a new file under ``folder``; over ``limit`` bytes (declared or sent) is a 413
    and leaves no file."""
    too_big = RequestError(
        413,
        f"the upload is larger than the {limit / 1024**2:g} MB this server takes",
        hint="raise [api] max_upload_mb, or drop the file into the inbox folder instead",
    )
    if declared is not None and declared > limit:
        raise too_big
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f"{uuid.uuid4().hex}{os.path.splitext(name)[1].lower()}{STAGED_SUFFIX}"
    digest, size = hashlib.sha256(), 0
    try:
        with open(staged, "xb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_big
                digest.update(chunk)
                await anyio.to_thread.run_sync(f.write, chunk)
            await anyio.to_thread.run_sync(os.fsync, f.fileno())
        if size == 0:
            raise RequestError(400, "the upload is empty", hint="send the recording as the request body")
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return Received(staged, digest.hexdigest(), size)


async def check_audio(staged: Path) -> None:
    """FFmpeg must find an audio stream in it, or the upload is refused (and removed) now."""
    try:
        await anyio.to_thread.run_sync(probe, staged)
    except PermanentFileError as e:
        staged.unlink(missing_ok=True)
        raise RequestError(415, f"the upload is not audio diarist can read: {e.message}", hint=e.hint) from None
    except ToolMissingError as e:
        staged.unlink(missing_ok=True)
        raise RequestError(503, e.message, hint=e.hint) from None
    except BaseException:  # an ffprobe that hung or answered nonsense, a cancelled request: nothing stays
        staged.unlink(missing_ok=True)
        raise


def sweep_staged(folder: Path) -> int:
    """Remove uploads a previous run was still receiving (their clients never got an id)."""
    removed = 0
    for path in folder.glob(f"*{STAGED_SUFFIX}") if folder.is_dir() else ():
        path.unlink(missing_ok=True)
        removed += 1
    return removed
