"""Output names that every share can store (pure)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.names import is_text, numbered, output_stem, printable, storable, within

FORBIDDEN = re.compile(r'[<>:"\\|?*\x00-\x1f/]')


class TestStorable:
    def test_replaces_what_smb_cannot_store(self):
        """Colons, question marks and friends become underscores."""
        assert storable('call 10:30 "final"?') == "call 10_30 _final__"

    def test_trailing_dots_and_spaces_go(self):
        """Windows drops them silently, which would change the name under us."""
        assert storable("notes. ") == "notes"

    def test_device_names_are_escaped(self):
        """CON, NUL, COM1 ... cannot be files on SMB, with or without an extension."""
        assert storable("CON") == "_CON"
        assert storable("nul.backup") == "_nul.backup"

    def test_long_names_are_cut_on_a_character_boundary(self):
        """Room stays for the numbered and suffixed variants within 255 bytes."""
        name = storable("é" * 200)
        assert len(name.encode()) <= 220 and name == "é" * 110

    @given(st.text(max_size=300))
    def test_any_name_becomes_storable_and_stays_so(self, name):
        """Never empty, nothing forbidden, no trailing dot or space, and idempotent."""
        s = storable(name)
        assert s and not FORBIDDEN.search(s) and not s.endswith((".", " "))
        assert storable(s) == s


class TestNamesThatAreNotText:
    def test_undecodable_bytes_are_shown_not_lost(self):
        """A name from non-UTF-8 bytes (Python keeps them as surrogate escapes) prints as ``\\xe9`` and is
        made storable; valid names, even with a literal backslash, are text as they are."""
        name = os.fsdecode(b"caf\xe9.wav")
        assert not is_text(name) and printable(name) == "caf\\xe9.wav"
        assert storable(name) == "caf_xe9.wav"
        for fine in ("café.wav", "a\\xe9.wav", 'we said "hi"\n.wav'):
            assert is_text(fine) and printable(fine) == fine


class TestOutputStem:
    def test_keeps_folders_and_drops_the_extension(self):
        """``a/b/meeting.m4a`` -> ``a/b/meeting``; dotted names keep their inner dots."""
        assert output_stem("a/b/meeting.m4a") == "a/b/meeting"
        assert output_stem("x.y.wav") == "x.y"

    def test_every_component_is_made_storable(self):
        """A folder with a colon is mirrored storably too."""
        assert output_stem("2024:01/a?b.wav") == "2024_01/a_b"

    def test_numbered(self):
        """The first alternative is the name itself, then ``name (2)``."""
        assert [numbered("m", n) for n in (1, 2, 3)] == ["m", "m (2)", "m (3)"]


class TestWithin:
    """``..`` escapes: no relative path from the watcher, the ledger or a share may steer a write outside."""

    @pytest.mark.parametrize("rel", ["../x.wav", "a/../../b.wav", "/etc/passwd", "a//b.wav", "./x.wav", ".."])
    def test_refuses_what_would_leave_the_root(self, rel: str):
        with pytest.raises(ValueError, match="not plainly inside"):
            within(Path("/srv/outbox"), rel)

    def test_keeps_plain_paths(self):
        assert within(Path("/srv/outbox"), "team/2026/call") == Path("/srv/outbox/team/2026/call")

    @pytest.mark.parametrize("rel", ["../../x.wav", "a/../../b.wav", "/abs/x.wav", "../..", ".../x.wav"])
    def test_output_names_of_hostile_paths_stay_inside(self, rel: str):
        root = Path("/srv/outbox")
        target = within(root, output_stem(rel))
        assert target.resolve().is_relative_to(root)
