"""Diarize one audio file with the local engine and build its result document (no ledger, no folders).

Shared by the daemon's worker, ``diarist process`` and the cloud job, so every route produces the same
``diarist.result/1`` document from the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diarist.handlers import audio
from diarist.handlers.asr import Transcribers
from diarist.handlers.engine import EngineOutput, LocalEngine
from diarist.handlers.errors import PermanentFileError
from diarist.handlers.results import SourceFacts, build_result
from diarist.handlers.transcribe import Transcript, transcribe_turns
from diarist.policies.flavor import Task

#: of a transcribe file's progress, the part diarization takes (speech recognition the rest)
DIARIZATION_SHARE = 0.5
#: tasks whose result carries speaker segments
SPEAKER_TASKS = (Task.DIARIZATION, Task.FULL, Task.TRANSCRIBE)


def diarize_file(
    path: Path,
    *,
    engine: LocalEngine,
    name: str,
    relative_path: str,
    sha256: str,
    task: Task,
    speakers: dict[str, int],
    route: dict[str, Any],
    progress: Callable[[str, float], None] | None = None,
    backend: dict[str, Any] | None = None,
    transcribers: Transcribers | None = None,
    language: str = "en",
) -> dict[str, Any]:
    """Probe, decode and run ``task`` on ``path``; returns the result document. ``transcribe`` needs
    ``transcribers``: speech recognition of each speaker turn follows the diarization.

    Raises ``PermanentFileError`` for input FFmpeg cannot read, ``ToolMissingError`` without FFmpeg,
    ``ModelError`` for a language the configured recogniser does not hear (before any work).
    """
    if task is Task.TRANSCRIBE:
        if transcribers is None:
            raise ValueError("task transcribe needs transcribers")
        transcribers.check(language)
    started = time.monotonic()
    if path.stat().st_size == 0:
        raise PermanentFileError(
            "the file is empty (0 bytes)", hint="the copy probably failed: copy the recording into the inbox again"
        )
    info = audio.probe(path)
    waveform = audio.decode(path, info.duration)
    decoded = time.monotonic()
    if waveform.size == 0:
        raise PermanentFileError(
            "the audio stream is empty (0 samples decoded)", hint="drop a recording that contains audio"
        )
    problem = audio.content_problem(waveform)
    if problem is not None:
        raise problem
    if progress:
        progress("decoded", 0.0)
    share = DIARIZATION_SHARE if task is Task.TRANSCRIBE else 1.0
    stage = (lambda step, f: progress(step, f * share)) if progress else None
    if audio.is_silent(waveform):  # nobody speaks in digital silence: a valid, empty answer without the models
        output = EngineOutput(
            vad=() if task in (Task.VAD, Task.FULL) else None, overlap=() if task in (Task.OSD, Task.FULL) else None
        )
    else:
        output = engine.run(waveform, uri=Path(name).stem, task=task, speakers=speakers, progress=stage)
    diarized = time.monotonic()
    transcript: Transcript | None = None
    if task is Task.TRANSCRIBE:
        assert transcribers is not None
        recogniser = transcribers.for_language(language)
        report = (lambda f: progress("transcription", min(share + (1 - share) * f, 0.99))) if progress else None
        transcript = transcribe_turns(
            waveform, output.exclusive_segments or output.segments, recogniser, language, report
        )
    finished = time.monotonic()
    seconds = waveform.size / audio.SAMPLE_RATE
    engine_info = engine.info
    return build_result(
        source=SourceFacts(
            name=name,
            relative_path=relative_path,
            sha256=sha256,
            size=path.stat().st_size,
            duration=round(info.duration or waveform.size / audio.SAMPLE_RATE, 3),
            sample_rate=info.sample_rate,
            channels=info.channels,
        ),
        task=task.value,
        engine={
            "backend": engine_info.backend,
            "models": list(engine_info.models),
            "device": engine_info.device,
            **(backend or {}),
        },
        route=route,
        timings={
            "decode_seconds": decoded - started,
            "inference_seconds": finished - decoded,
            "total_seconds": finished - started,
            "real_time_factor": (finished - started) / max(seconds, 1e-6),
            **(
                {
                    "diarization_seconds": diarized - decoded,
                    "transcription_seconds": transcript.seconds,
                    "transcription_real_time_factor": transcript.seconds / max(seconds, 1e-6),
                }
                if transcript is not None
                else {}
            ),
        },
        segments=output.segments if task in SPEAKER_TASKS else (),
        exclusive_segments=output.exclusive_segments if task in SPEAKER_TASKS else (),
        vad=output.vad,
        overlap=output.overlap,
        speakers_requested=speakers,
        centroids=output.centroids if task in SPEAKER_TASKS else None,
        transcript=transcript,
    )
