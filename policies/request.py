"""What one file asks for, worked out once: its task, speaker counts and user (its sidecar's, else its
inbox's), and the key under which its answer is stored and reused."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from .flavor import Task
from .sidecar import FileRequest


@dataclass(frozen=True)
class InboxDefaults:
    """What an inbox asks of every file in it unless the file's sidecar says otherwise."""

    task: Task = Task.DIARIZATION
    speakers: Mapping[str, int] = field(default_factory=dict)
    user: str | None = None
    language: str = "en"
    formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelIds:
    """The configured models an answer depends on: the diarization pipeline and the speech recogniser."""

    pipeline: str
    asr: str = "bundled"


@dataclass(frozen=True)
class Question:
    task: Task
    speakers: dict[str, int]
    user: str | None
    #: the spoken language (what speech recognition is asked to hear; only ``transcribe`` uses it)
    language: str = "en"
    #: result formats beyond RTTM and JSON (rendering only: not part of the reuse key)
    formats: tuple[str, ...] = ()

    def result_key(self, sha256: str, models: ModelIds) -> str:
        if self.task is not Task.TRANSCRIBE:
            return result_key(sha256, self.task, self.speakers, models.pipeline)
        return result_key(
            sha256, self.task, self.speakers, models.pipeline, language=self.language, asr_model=models.asr
        )


def result_key(
    sha256: str,
    task: Task,
    speakers: Mapping[str, int],
    model: str,
    *,
    language: str | None = None,
    asr_model: str | None = None,
) -> str:
    """Same content + same question + same models = same answer: the cache key for reuse (a transcript in
    another language, or by another recogniser, is another answer)."""
    extra = {"language": language, "asr": asr_model} if language is not None else {}
    params = json.dumps({"task": Task(task).value, **speakers, "model": model, **extra}, sort_keys=True)
    return f"{sha256}:{params}"


def request_of(params: str | None) -> FileRequest:
    """A file's request as the ledger keeps it (``FileRequest.to_json``, or nothing)."""
    return FileRequest.from_json(json.loads(params)) if params else FileRequest()


def question(request: FileRequest, defaults: InboxDefaults) -> Question:
    # speaker counts replace the inbox's as a whole: a sidecar min_speakers next to an inbox num_speakers
    # would otherwise ask for both
    speakers = request.speakers() or dict(defaults.speakers)
    return Question(
        Task(request.task or defaults.task),
        speakers,
        request.user or defaults.user,
        request.language or defaults.language,
        request.formats if request.formats is not None else defaults.formats,
    )
