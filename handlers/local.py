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
from diarist.handlers.engine import EngineOutput, LocalEngine
from diarist.handlers.errors import PermanentFileError
from diarist.handlers.results import SourceFacts, build_result
from diarist.policies.flavor import Task


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
) -> dict[str, Any]:
    """Probe, decode and run ``task`` on ``path``; returns the result document.

    Raises ``PermanentFileError`` for input FFmpeg cannot read, ``ToolMissingError`` without FFmpeg.
    """
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
    if audio.is_silent(waveform):  # nobody speaks in digital silence: a valid, empty answer without the models
        output = EngineOutput(
            vad=() if task in (Task.VAD, Task.FULL) else None, overlap=() if task in (Task.OSD, Task.FULL) else None
        )
    else:
        output = engine.run(waveform, uri=Path(name).stem, task=task, speakers=speakers, progress=progress)
    finished = time.monotonic()
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
            "real_time_factor": (finished - started) / max(waveform.size / audio.SAMPLE_RATE, 1e-6),
        },
        segments=output.segments if task in (Task.DIARIZATION, Task.FULL) else (),
        exclusive_segments=output.exclusive_segments if task in (Task.DIARIZATION, Task.FULL) else (),
        vad=output.vad,
        overlap=output.overlap,
        speakers_requested=speakers,
        centroids=output.centroids if task in (Task.DIARIZATION, Task.FULL) else None,
    )
