"""An inbox on a share: polling mode end to end, files renamed into place or overwritten, awkward names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diarist.handlers.intake import sha256_of

from conftest import DaemonProcess, cut, log_events, wait_until


def write_config(tmp_path: Path) -> tuple[Path, Path, Path]:
    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    config = tmp_path / "diarist.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "h"\nlog_format = "json"\nrescan_interval = 30\n'
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = true\npoll_interval = 0.5\n'
        "stability_seconds = 8\n"
    )
    inbox.mkdir()
    return config, inbox, outbox


def logged(daemon: DaemonProcess, event: str, name: str) -> list[dict]:
    return [e for e in log_events(daemon.text()) if e.get("event") == event and e.get("file") == name]


def results(outbox: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in outbox.glob("*.json") if p.name.count(".") == 1}


@pytest.mark.slow
class TestPollingInbox:
    def test_share_like_drops(self, tmp_path, sample, daemon_factory):
        """Polling: a file renamed into place, one overwritten (shrunk) before it was stable, names a share
        cannot store, and two names differing only in case all end with one correct result each."""
        clips = tmp_path / "clips"
        clips.mkdir()
        long, short, a, b, c, d = (
            cut(sample[0], clips / f"{n}.wav", start, secs)
            for n, start, secs in (
                ("long", 0, 12),
                ("short", 12, 4),
                ("a", 3, 4),
                ("b", 7, 4),
                ("c", 17, 4),
                ("d", 21, 4),
            )
        )
        config, inbox, outbox = write_config(tmp_path)
        daemon = daemon_factory(config).start()
        assert '"polling": true' in daemon.text()

        # written under a temporary name, renamed into place when complete (rsync, most SMB clients)
        part = inbox / "renamed.wav.part"
        part.write_bytes(a.read_bytes())
        os.rename(part, inbox / "renamed.wav")
        # overwritten with a shorter recording while diarist waited for it to settle: right after it was seen,
        # well within the 8 s it must stay unchanged
        (inbox / "overwritten.wav").write_bytes(long.read_bytes())
        wait_until(lambda: logged(daemon, "discovered", "overwritten.wav"), 30, "overwritten.wav discovered")
        (inbox / "overwritten.wav").write_bytes(short.read_bytes())
        assert not logged(daemon, "claimed", "overwritten.wav"), "claimed before it was overwritten"
        # a name SMB cannot store, and two names a case-insensitive share would merge
        (inbox / "call 10:30?.wav").write_bytes(b.read_bytes())
        (inbox / "Meeting.wav").write_bytes(c.read_bytes())
        (inbox / "meeting.wav").write_bytes(d.read_bytes())

        wait_until(lambda: len(results(outbox)) == 5, 300, "five results")
        assert daemon.stop() == 0
        docs = results(outbox)
        by_source = {doc["source"]["relative_path"]: (name, doc) for name, doc in docs.items()}
        assert set(by_source) == {"renamed.wav", "overwritten.wav", "call 10:30?.wav", "Meeting.wav", "meeting.wav"}

        assert by_source["renamed.wav"][1]["source"]["sha256"] == sha256_of(a)
        over = by_source["overwritten.wav"][1]
        assert over["source"]["sha256"] == sha256_of(short)
        # claimed once, and what it claimed was the overwritten content
        assert [e["sha"] for e in logged(daemon, "claimed", "overwritten.wav")] == [sha256_of(short)[:12]]
        assert over["source"]["duration"] == pytest.approx(4.0, abs=0.1)

        assert by_source["call 10:30?.wav"][0] == "call 10_30_.json"
        assert (outbox / "call 10_30_.rttm").exists()
        # case-insensitively distinct output names, each result beside its own RTTM
        names = sorted(by_source[k][0] for k in ("Meeting.wav", "meeting.wav"))
        assert len({n.casefold() for n in names}) == 2
        assert {by_source["Meeting.wav"][1]["source"]["sha256"], by_source["meeting.wav"][1]["source"]["sha256"]} == {
            sha256_of(c),
            sha256_of(d),
        }
        for name in docs:
            assert (outbox / name.replace(".json", ".rttm")).exists()
        assert not list(outbox.glob("*.status.json"))
        assert len(list((inbox / ".diarist/done").iterdir())) == 5
