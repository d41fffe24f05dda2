"""Speech recognisers behind one small interface: text for a stretch of 16 kHz mono audio.

The default is Moonshine base-en from the ``moonshine-cpp`` wheel (its weights and ONNX Runtime ship inside
the wheel: English, offline, no token). Other languages take a faster-whisper model from a local folder or
the Hub (``pip install 'diarist[whisper]'``). Which recogniser serves which language is decided here, once;
a language the configured recogniser cannot hear is refused with what to change, never transcribed as if
it were English.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from diarist.handlers.engine_settings import (
    BUNDLED_ASR,
    BUNDLED_ASR_ID,
    BUNDLED_LANGUAGES,
    TranscriptionSettings,
    unheard_language,
)
from diarist.handlers.errors import ModelError

SAMPLE_RATE = 16000
#: Moonshine is trained on utterances up to about 30 s; it is most reliable well inside that
MOONSHINE_WINDOW = 20.0
#: Whisper hears 30-s windows
WHISPER_WINDOW = 28.0


class Transcriber(Protocol):
    """What ``handlers.transcribe`` needs of a recogniser."""

    #: names the recogniser in results and in the reuse key
    model_id: str
    #: the longest stretch it hears well, in seconds (longer turns are split at pauses first)
    window: float

    def transcribe(self, samples: np.ndarray, language: str) -> str:
        """Text of ``samples`` (float32 in [-1, 1], 16 kHz mono) spoken in ``language``."""
        ...


class MoonshineTranscriber:
    """Moonshine base-en through ``moonshine-cpp``'s C library (its Python ``transcribe`` cannot be used: it
    refers to a ``ctypes.c_float_p`` that does not exist). One model, calls serialised."""

    model_id = BUNDLED_ASR_ID
    window = MOONSHINE_WINDOW

    def __init__(self) -> None:
        try:
            import moonshine_cpp
            from moonshine_cpp import moonshine_cpp as native
        except (ImportError, OSError) as e:
            raise ModelError(
                f"the bundled speech recogniser could not be loaded ({type(e).__name__}: {e})",
                hint='reinstall diarist (make setup) so that the "moonshine-cpp" package is present',
            ) from e
        try:
            self._model = moonshine_cpp.MoonshineModel()  # no arguments: the base-en files inside the wheel
        except (AssertionError, MemoryError, OSError) as e:
            raise ModelError(
                f"the bundled Moonshine model could not be loaded: {e}",
                hint='reinstall the "moonshine-cpp" package (its wheel carries the model files)',
            ) from e
        self._lib = native.moonshine_lib
        self._lock = threading.Lock()

    def transcribe(self, samples: np.ndarray, language: str) -> str:
        if language not in BUNDLED_LANGUAGES:
            raise unsupported_language(language)
        audio = np.ascontiguousarray(samples, dtype=np.float32)
        if audio.size == 0:
            return ""
        text = ctypes.c_char_p(0)
        with self._lock:
            code = self._lib.moonshine_transcribe(
                self._model.model_handle,
                audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                audio.size,
                ctypes.byref(text),
            )
            if code != 0:
                raise RuntimeError(f"Moonshine could not transcribe {audio.size / SAMPLE_RATE:.1f} s (code {code})")
            try:
                return (text.value or b"").decode("utf-8", errors="replace").strip()
            finally:
                self._lib.moonshine_free_text(text)


class WhisperTranscriber:
    """A faster-whisper (CTranslate2) model from a local folder or the Hub, for the languages Moonshine
    does not hear."""

    window = WHISPER_WINDOW

    def __init__(self, model: str, *, device: str = "auto", token: str | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ModelError(
                f"[transcription] model = {model!r} needs the faster-whisper package, which is not installed",
                hint='install it with pip install "diarist[whisper]" (or set model = "bundled" for English)',
            ) from e
        local = Path(model).expanduser()
        looks_local = local.is_absolute() or model.startswith((".", "~")) or local.exists()
        if looks_local and not (local / "model.bin").is_file():
            raise ModelError(
                f"[transcription] model folder {local} does not hold a faster-whisper model (no model.bin)",
                hint="point it at a CTranslate2 conversion of a Whisper model (e.g. a download of "
                "Systran/faster-whisper-small), or at a Hub id",
            )
        kind, _, index = device.partition(":")
        try:
            self._model: Any = WhisperModel(
                str(local) if looks_local else model,
                device=kind,
                device_index=int(index or 0),
                compute_type="default",
                local_files_only=token is None,
                use_auth_token=token,
            )
        except Exception as e:  # faster-whisper raises what huggingface_hub and CTranslate2 raise
            raise ModelError(
                f"[transcription] model {model!r} could not be loaded ({type(e).__name__}: {e})",
                hint="without HF_TOKEN a Hub model must already be in the Hugging Face cache; "
                "set HF_TOKEN once to download it, or point model at a local folder",
            ) from e
        self.model_id = model
        self._lock = threading.Lock()

    def transcribe(self, samples: np.ndarray, language: str) -> str:
        with self._lock:
            segments, _ = self._model.transcribe(
                np.ascontiguousarray(samples, dtype=np.float32), language=language, beam_size=5, vad_filter=False
            )
            return " ".join(s.text.strip() for s in segments).strip()


def unsupported_language(language: str) -> ModelError:
    message, hint = unheard_language(language)
    return ModelError(message, hint=hint)


class Transcribers:
    """The recogniser for each language, built on first use and kept (loading takes a second or more)."""

    def __init__(self, settings: TranscriptionSettings, *, token: str | None = None):
        self.settings = settings
        self._token = token
        self._built: Transcriber | None = None
        self._lock = threading.Lock()

    def check(self, language: str) -> None:
        """Refuse a language the configured recogniser cannot hear, before any work is done on the file."""
        if not self.settings.hears(language):
            raise unsupported_language(language)

    def for_language(self, language: str) -> Transcriber:
        self.check(language)
        with self._lock:
            if self._built is None:
                if self.settings.model == BUNDLED_ASR:
                    self._built = MoonshineTranscriber()
                else:
                    self._built = WhisperTranscriber(
                        self.settings.model, device=self.settings.device, token=self._token
                    )
            return self._built
