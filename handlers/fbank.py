"""Kaldi log-mel filterbank features in numpy: what ``torchaudio.compliance.kaldi.fbank`` computes with the
options CAM++ was trained with (25 ms frames every 10 ms, povey window, pre-emphasis 0.97, 512-point FFT,
power spectrum, 80 mel bins from 20 Hz to Nyquist, no dither, frames cut inside the signal), so that the
bundled engine needs no torch at run time. ``tests/test_diarize.py`` compares it with torchaudio.
"""

from __future__ import annotations

import functools

import numpy as np

from diarist.handlers.audio import SAMPLE_RATE

FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512
NUM_MEL_BINS = 80
LOW_FREQ = 20.0
PREEMPHASIS = 0.97
#: torch.finfo(torch.float32).eps: Kaldi's floor before the log
LOG_FLOOR = float(np.finfo(np.float32).eps)


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@functools.cache
def mel_banks() -> np.ndarray:
    """(FFT_SIZE // 2 + 1, NUM_MEL_BINS) triangular filters on the mel scale, Kaldi's construction."""
    nyquist = 0.5 * SAMPLE_RATE
    low, high = _mel(LOW_FREQ), _mel(nyquist)
    delta = (high - low) / (NUM_MEL_BINS + 1)
    k = np.arange(NUM_MEL_BINS, dtype=np.float64)[:, None]
    left, center, right = low + k * delta, low + (k + 1) * delta, low + (k + 2) * delta
    mel = _mel(SAMPLE_RATE / FFT_SIZE * np.arange(FFT_SIZE // 2, dtype=np.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # (bins, FFT_SIZE // 2)
    banks = np.pad(banks, ((0, 0), (0, 1)))  # Kaldi leaves the Nyquist bin out
    return banks.T.astype(np.float32)


@functools.cache
def povey_window() -> np.ndarray:
    n = np.arange(FRAME_LENGTH, dtype=np.float64)
    return ((0.5 - 0.5 * np.cos(2 * np.pi * n / (FRAME_LENGTH - 1))) ** 0.85).astype(np.float32)


def num_frames(num_samples: int) -> int:
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def fbank(samples: np.ndarray) -> np.ndarray:
    """(batch, samples) float at 16-bit scale -> (batch, frames, NUM_MEL_BINS) float32 log-mel energies."""
    batch, length = samples.shape
    count = num_frames(length)
    windows = np.lib.stride_tricks.sliding_window_view(samples, FRAME_LENGTH, axis=1)[:, ::FRAME_SHIFT][:, :count]
    frames = windows.astype(np.float32)
    frames = frames - frames.mean(axis=2, keepdims=True)
    previous = np.concatenate([frames[..., :1], frames[..., :-1]], axis=2)
    frames = (frames - PREEMPHASIS * previous) * povey_window()
    spectrum = np.fft.rfft(frames, n=FFT_SIZE, axis=2)
    power = np.abs(spectrum) ** 2
    energies = power @ mel_banks()
    return np.log(np.maximum(energies, LOG_FLOOR))


def campplus_features(audio: np.ndarray) -> np.ndarray:
    """(batch, samples) float in [-1, 1) -> CAM++'s input: mean-normalised fbank as (batch, bins, frames)."""
    feats = fbank(audio * float(1 << 15))
    feats -= feats.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(feats.transpose(0, 2, 1))
