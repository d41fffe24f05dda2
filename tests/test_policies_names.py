"""Output names that every share can store (pure)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.names import numbered, output_stem, storable

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
