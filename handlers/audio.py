"""Probe and decode audio through FFmpeg: any container it reads, down-mixed to mono and resampled to 16 kHz."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diarist.handlers.errors import PermanentFileError, ToolMissingError

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int
    codec: str


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(
            f"{name} is not installed, so audio cannot be decoded",
            hint="install FFmpeg (Debian/Ubuntu: apt-get install ffmpeg) and restart diarist",
        )
    return path


def probe(path: Path) -> AudioInfo:
    """Read duration, rate and channels of the first audio stream. Raises ``PermanentFileError``."""
    proc = subprocess.run(
        [
            _tool("ffprobe"),
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            "-select_streams",
            "a:0",
            "--",
            str(path),
        ],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"ffprobe exit {proc.returncode}"
        raise PermanentFileError(
            f"not a readable audio file: {detail}",
            hint="check that the file is complete and really is audio (wav, flac, mp3, m4a, ogg, opus, webm, mp4)",
        )
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams") or []
    if not streams:
        raise PermanentFileError(
            "the file contains no audio stream", hint="drop an audio recording, not a video-only or data file"
        )
    s = streams[0]
    duration = s.get("duration") or (data.get("format") or {}).get("duration") or 0.0
    return AudioInfo(
        duration=float(duration),
        sample_rate=int(s.get("sample_rate") or 0),
        channels=int(s.get("channels") or 0),
        codec=str(s.get("codec_name") or "unknown"),
    )


def decode(path: Path) -> np.ndarray:
    """Whole file as float32 mono samples at 16 kHz. Raises ``PermanentFileError`` when FFmpeg cannot decode it."""
    proc = subprocess.run(
        [
            _tool("ffmpeg"),
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(SAMPLE_RATE),
            "-f",
            "f32le",
            "-acodec",
            "pcm_f32le",
            "-",
        ],
        capture_output=True,
        timeout=None,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PermanentFileError(
            f"FFmpeg could not decode the audio: {err[-1] if err else 'exit ' + str(proc.returncode)}",
            hint="re-export the recording (e.g. as WAV or FLAC) and drop it again",
        )
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()
