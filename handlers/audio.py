"""Probe and decode audio through FFmpeg: any container it reads, down-mixed to mono and resampled to 16 kHz."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diarist.handlers.errors import PermanentFileError, ToolMissingError

SAMPLE_RATE = 16000
#: 16-bit full scale: ``decode``'s samples divided by this are floats in [-1, 1)
PCM_FULL_SCALE = 32768


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
            hint="install FFmpeg (Debian/Ubuntu: apt-get install ffmpeg); waiting files are retried by themselves",
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
        detail = detail.removeprefix(f"{path}: ")  # where diarist keeps it meanwhile is no news to the user
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


def decode(path: Path, duration: float | None = None) -> np.ndarray:
    """Whole file as 16-bit mono samples at 16 kHz. Raises ``PermanentFileError`` when FFmpeg cannot decode it.

    16-bit rather than float: a 4-hour file is 0.46 GB instead of 0.92 GB, the difference between fitting
    the long-file memory target or not. Nothing audible to the models is lost (almost every recording is
    16-bit already); ``to_float`` scales to [-1, 1) where float samples are needed. FFmpeg's output is read
    straight into one array sized from ``duration`` (grown if the estimate was short), never held twice.
    """
    cmd = [
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
        "s16le",
        "-acodec",
        "pcm_s16le",
        "-",
    ]
    capacity = int((duration or 60.0) * SAMPLE_RATE * 1.01) + SAMPLE_RATE
    samples = np.empty(capacity, dtype=np.int16)
    filled = 0  # bytes
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None
        with proc.stdout:
            while True:
                if filled == samples.nbytes:
                    samples = np.resize(samples, int(samples.size * 1.5) + SAMPLE_RATE)
                got = proc.stdout.readinto(memoryview(samples.view(np.uint8))[filled:])
                if not got:
                    break
                filled += got
        returncode = proc.wait()
        stderr.seek(0)
        err = stderr.read().decode("utf-8", "replace").strip().splitlines()
    if returncode != 0:
        raise PermanentFileError(
            f"FFmpeg could not decode the audio: {err[-1] if err else 'exit ' + str(returncode)}",
            hint="re-export the recording (e.g. as WAV or FLAC) and drop it again",
        )
    return samples[: filled // 2]


def to_float(samples: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1) from ``decode``'s 16-bit ones (float input is returned as it is)."""
    if samples.dtype != np.int16:
        return samples
    return np.multiply(samples, np.float32(1 / PCM_FULL_SCALE), dtype=np.float32)


#: shorter than this there is no speech to tell apart (a syllable takes ~0.2 s; pyannote's frames are 17 ms)
MIN_SECONDS = 0.25
#: a file whose loudest sample is this quiet (1/32768 of full scale: the last bit) holds no sound at all
SILENT_PEAK = 1
#: how much of the file ``noise_instead_of_audio`` looks at
_NOISE_PROBE_SECONDS = 60
_NOISE_FRAME = 512


def content_problem(samples: np.ndarray) -> PermanentFileError | None:
    """Why decoded 16-bit ``samples`` cannot be diarized at all, or None.

    Catches what decodes without an FFmpeg error but is not a recording: an empty or near-empty stream, and
    bytes that are not audio behind a valid header (their samples are loud white noise).
    """
    if samples.size < MIN_SECONDS * SAMPLE_RATE:
        return PermanentFileError(
            f"the audio is only {samples.size / SAMPLE_RATE:.3f} s long: too short to tell who speaks "
            f"(at least {MIN_SECONDS} s)",
            hint="drop the complete recording; if the copy was cut short, copy it again",
        )
    if noise_instead_of_audio(samples):
        return PermanentFileError(
            "the audio decodes to loud white noise: the data behind the file's header is not audio "
            "(a damaged file, or another kind of file renamed)",
            hint="re-export the recording from the application that made it, or copy the original again",
        )
    return None


def is_silent(samples: np.ndarray) -> bool:
    """True when no sample rises above the last bit: digital silence, no speech to look for."""
    return samples.size == 0 or int(np.abs(samples.astype(np.int32)).max()) <= SILENT_PEAK


def noise_instead_of_audio(samples: np.ndarray) -> bool:
    """Loud (RMS above -15 dBFS) and spectrally flat (flatness above 0.6 below 7 kHz) over the first minute.

    Random bytes read as samples are full-band white noise at about -5 dBFS. Speech and music are far from
    flat (flatness below 0.1) and room noise is far quieter, so neither comes near both thresholds.
    """
    probe = samples[: _NOISE_PROBE_SECONDS * SAMPLE_RATE]
    frames = probe[: probe.size // _NOISE_FRAME * _NOISE_FRAME].reshape(-1, _NOISE_FRAME)
    if not len(frames):
        return False
    x = to_float(frames)
    rms_db = 10 * np.log10(float(np.mean(x**2)) + 1e-12)
    if rms_db < -15:
        return False
    power = np.mean(np.abs(np.fft.rfft(x, axis=1)) ** 2, axis=0)
    band = power[1 : int(len(power) * 7000 / (SAMPLE_RATE / 2))]  # skips DC and the resampler's roll-off
    flatness = float(np.exp(np.mean(np.log(band + 1e-20))) / (np.mean(band) + 1e-20))
    return flatness > 0.6
