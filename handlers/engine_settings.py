"""The ``[models]`` and ``[transcription]`` choices engines are built from (stdlib only: the configuration and
the cloud manifest use them without loading numpy or torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self


class _Portable:
    """A settings dataclass the cloud manifest carries as JSON (fields unknown to this version are ignored)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass(frozen=True)
class EngineSettings(_Portable):
    """The same on this machine and in a cloud job (the manifest carries them)."""

    pipeline: str = "bundled"
    device: str = "auto"
    clustering_threshold: float | None = None
    segmentation_batch_size: int | None = None  # None: the engine's choice for its runtime
    embedding_batch_size: int = 32
    fast: bool = True


#: ``[transcription] model`` for the recogniser that ships inside the ``moonshine-cpp`` wheel
BUNDLED_ASR = "bundled"
#: what the bundled recogniser is called in results, and the languages it hears
BUNDLED_ASR_ID = "UsefulSensors/moonshine-base (moonshine-cpp, base-en)"
BUNDLED_LANGUAGES = ("en",)
WHISPER_HINT = (
    "set [transcription] model to a faster-whisper model: a local folder, or a Hub id such as"
    ' "Systran/faster-whisper-small" (downloaded once with HF_TOKEN set, then from the cache),'
    ' and install it with pip install "diarist[whisper]"'
)


def unheard_language(language: str) -> tuple[str, str]:
    """(message, what to do) for a language the bundled recogniser does not hear: the configuration refuses it
    at start, a file asking for it fails with the same words."""
    return (
        f'transcription in "{language}" needs a multilingual speech recogniser; {BUNDLED_ASR_ID} hears English only',
        f'{WHISPER_HINT}; or ask for language "en"',
    )


@dataclass(frozen=True)
class TranscriptionSettings(_Portable):
    """``[transcription]``: which recogniser hears the turns of ``task = "transcribe"`` files.

    ``model`` is ``"bundled"`` (Moonshine base-en, English only, offline) or a faster-whisper model: a local
    folder or a Hub id (downloaded once with a token, or already in the Hugging Face cache). ``language`` is
    the default spoken language; a file's sidecar or its inbox may ask for another.
    """

    model: str = BUNDLED_ASR
    language: str = "en"
    device: str = "auto"

    def hears(self, language: str) -> bool:
        """Whether the configured recogniser can transcribe ``language`` (a faster-whisper model: any)."""
        return self.model != BUNDLED_ASR or language in BUNDLED_LANGUAGES
