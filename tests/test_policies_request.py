"""What one file asks for and the key its answer is reused under (diarist.policies.request)."""

from __future__ import annotations

from diarist.policies.flavor import Task
from diarist.policies.request import InboxDefaults, ModelIds, question
from diarist.policies.sidecar import FileRequest

SHA = "ab" * 32
MODELS = ModelIds("bundled", "bundled")
NO_DEFAULTS = InboxDefaults()


def key(request: FileRequest, defaults: InboxDefaults = NO_DEFAULTS, models: ModelIds = MODELS) -> str:
    return question(request, defaults).result_key(SHA, models)


def test_the_sidecar_language_wins_over_the_inbox() -> None:
    asked = question(FileRequest(language="de"), InboxDefaults(task=Task.TRANSCRIBE, language="fr"))
    assert asked.task is Task.TRANSCRIBE and asked.language == "de"
    assert question(FileRequest(), InboxDefaults(language="fr")).language == "fr"


def test_a_transcript_is_reused_only_for_the_same_language_and_recogniser() -> None:
    transcribe = FileRequest(task=Task.TRANSCRIBE)
    assert key(transcribe) == key(FileRequest(task=Task.TRANSCRIBE, language="en"))
    assert key(transcribe) != key(FileRequest(task=Task.TRANSCRIBE, language="de"))
    assert key(transcribe) != key(transcribe, models=ModelIds("bundled", "/models/faster-whisper-small"))
    assert key(transcribe) != key(FileRequest(task=Task.DIARIZATION))


def test_diarization_keys_do_not_depend_on_language_or_recogniser() -> None:
    """Results stored before transcription existed keep their keys (and are still reused)."""
    plain = FileRequest(num_speakers=2)
    assert key(plain) == key(FileRequest(num_speakers=2, language="de"))
    assert key(plain) == key(plain, models=ModelIds("bundled", "elsewhere"))
    assert key(plain) == f'{SHA}:{{"model": "bundled", "num_speakers": 2, "task": "diarization"}}'
