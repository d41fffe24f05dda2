"""Known voices in the ledger (``voiceprints``): one vector per name and embedding model, enrolled with
``diarist voices add``. A voiceprint is biometric data: it is never logged, never sent to a cloud job
(identification happens where the daemon writes the result) and ``voices remove`` deletes it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from diarist.daemon.ledger import Ledger
from diarist.handlers.results import text_vector, vector_text


@dataclass(frozen=True)
class Voiceprint:
    name: str
    model: str
    vector: tuple[float, ...]
    speech_seconds: float
    clips: int
    created_at: float


class VoiceBook:
    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def add(self, name: str, model: str, vector: list[float], speech_seconds: float, clips: int) -> None:
        """Enrol (or replace) ``name``'s voiceprint for ``model``."""
        with self.ledger.transaction() as db:
            db["voiceprints"].upsert(
                {
                    "name": name,
                    "model": model,
                    "vector": vector_text(vector),
                    "speech_seconds": round(speech_seconds, 3),
                    "clips": clips,
                    "created_at": time.time(),
                },
                pk=("name", "model"),
            )

    def all(self) -> list[Voiceprint]:
        rows = self.ledger.db.query("select * from voiceprints order by name, model")
        return [
            Voiceprint(
                r["name"],
                r["model"],
                tuple(text_vector(r["vector"]).tolist()),
                r["speech_seconds"],
                r["clips"],
                r["created_at"],
            )
            for r in rows
        ]

    def vectors(self, model: str) -> dict[str, tuple[float, ...]]:
        """The voiceprints comparable with centroids of ``model`` (another model's vectors never are)."""
        return {v.name: v.vector for v in self.all() if v.model == model}

    def remove(self, name: str) -> int:
        """Delete every voiceprint of ``name``; returns how many there were."""
        with self.ledger.transaction() as db:
            n = next(db.query("select count(*) as n from voiceprints where name = ?", [name]))["n"]
            db.execute("delete from voiceprints where name = ?", [name])
        return int(n)
