"""Native events or polling per inbox, and full scans of an inbox (diarist.policies.watchmode, daemon.watcher)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.daemon.config import InboxSettings
from diarist.daemon.watcher import scan, watch_mode
from diarist.policies.watchmode import Mount, WatchMode, choose_watch_mode, is_network_fs, mount_for, parse_mounts

MOUNTS_TEXT = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
/dev/sdb1 /mnt ext4 rw 0 0
//nas/share /mnt/share cifs rw,vers=3.0 0 0
nas:/export /srv/nfs nfs4 rw 0 0
//nas/team /media/Team\\040Share cifs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""
MOUNTS = parse_mounts(MOUNTS_TEXT)


class TestParseMounts:
    def test_points_and_types(self) -> None:
        """Each line gives its mount point and filesystem type, in order."""
        assert MOUNTS[:4] == [
            Mount("/", "ext4"),
            Mount("/proc", "proc"),
            Mount("/mnt", "ext4"),
            Mount("/mnt/share", "cifs"),
        ]

    def test_decodes_octal_space(self) -> None:
        """\\040 in a mount point is a space."""
        assert Mount("/media/Team Share", "cifs") in MOUNTS

    def test_decodes_tab_and_backslash(self) -> None:
        """\\011 is a tab and \\134 a backslash."""
        assert parse_mounts("x /a\\011b\\134c nfs rw 0 0") == [Mount("/a\tb\\c", "nfs")]

    def test_keeps_non_ascii_names(self) -> None:
        """Non-ASCII mount points (which the kernel writes unescaped) are kept as they are."""
        assert parse_mounts("//nas/b /mnt/Büro cifs rw 0 0") == [Mount("/mnt/Büro", "cifs")]

    def test_skips_short_and_blank_lines(self) -> None:
        """Blank or truncated lines are skipped."""
        assert parse_mounts("\nonly two\n") == []


class TestMountFor:
    @pytest.mark.parametrize(
        ("path", "point", "fstype"),
        [
            ("/mnt/share/inbox", "/mnt/share", "cifs"),
            ("/mnt/share", "/mnt/share", "cifs"),
            ("/mnt/other", "/mnt", "ext4"),
            ("/mnt/sharex", "/mnt", "ext4"),
            ("/mnt/sharex/inbox", "/mnt", "ext4"),
            ("/media/Team Share/in", "/media/Team Share", "cifs"),
            ("/home/u/inbox", "/", "ext4"),
            ("/", "/", "ext4"),
        ],
    )
    def test_longest_mount_point_wins(self, path: str, point: str, fstype: str) -> None:
        """The deepest mount point that contains the path holds it; a shared name prefix is not enough."""
        assert mount_for(path, MOUNTS) == Mount(point, fstype)

    @given(st.permutations([Mount("/", "ext4"), Mount("/mnt", "xfs"), Mount("/mnt/share", "cifs")]))
    def test_table_order_does_not_matter(self, mounts: list[Mount]) -> None:
        """With distinct mount points the answer does not depend on the table's order."""
        assert mount_for("/mnt/share/in", mounts).fstype == "cifs"
        assert mount_for("/mnt/in", mounts).fstype == "xfs"

    def test_later_mount_shadows_earlier(self) -> None:
        """Two mounts on one point: the later one (mounted over) counts."""
        assert mount_for("/mnt/x", [Mount("/mnt", "ext4"), Mount("/mnt", "nfs")]).fstype == "nfs"

    def test_unknown_without_table(self) -> None:
        """No mount table (not Linux) gives an unknown filesystem at /."""
        assert mount_for("/a", []) == Mount("/", "unknown")


class TestChooseWatchMode:
    @pytest.mark.parametrize("fstype", ["cifs", "smb3", "nfs", "nfs4", "fuse.sshfs", "9p"])
    def test_network_filesystems_poll(self, fstype: str) -> None:
        """On network filesystems "auto" polls, and the reason names the filesystem and mount point."""
        mode = choose_watch_mode("/net/inbox", "auto", [Mount("/", "ext4"), Mount("/net", fstype)])
        assert mode == WatchMode(True, fstype, "/net", f"{fstype} at /net is a network filesystem")
        assert is_network_fs(fstype)

    @pytest.mark.parametrize("fstype", ["ext4", "xfs", "tmpfs", "btrfs"])
    def test_local_filesystems_use_native_events(self, fstype: str) -> None:
        """On local filesystems "auto" uses native events."""
        mode = choose_watch_mode("/data/inbox", "auto", [Mount("/", "ext4"), Mount("/data", fstype)])
        assert not mode.polling and mode.fstype == fstype and "local" in mode.reason

    @pytest.mark.parametrize("fstype", ["cifs", "ext4"])
    def test_explicit_setting_wins(self, fstype: str) -> None:
        """polling = true or false overrides what the filesystem would suggest, and says so."""
        mounts = [Mount("/", fstype)]
        assert choose_watch_mode("/in", True, mounts) == WatchMode(True, fstype, "/", "polling = true in config")
        assert choose_watch_mode("/in", False, mounts) == WatchMode(False, fstype, "/", "polling = false in config")


def inbox_at(path: Path, recursive: bool = True, polling: bool | str = "auto") -> InboxSettings:
    return InboxSettings(path=path, outbox=path.parent / "outbox", recursive=recursive, polling=polling)


class TestWatcherWatchMode:
    def test_uses_given_mount_table(self) -> None:
        """watch_mode decides from the mount table it is given (no /proc read in tests)."""
        mode = watch_mode(inbox_at(Path("/mnt/share/inbox")), mounts_text=MOUNTS_TEXT)
        assert mode.polling and mode.fstype == "cifs" and mode.mount_point == "/mnt/share"

    def test_inbox_setting_passed_through(self) -> None:
        """The inbox's polling setting is honoured."""
        mode = watch_mode(inbox_at(Path("/mnt/share/inbox"), polling=False), mounts_text=MOUNTS_TEXT)
        assert not mode.polling and mode.reason == "polling = false in config"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    for rel in ["a.wav", "notes.txt", "sub/b.wav", "sub/deeper/c.wav", ".hidden/d.wav", ".diarist/processing/h/e.wav"]:
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.wav").write_bytes(b"x")
    (inbox / "linked").symlink_to(outside, target_is_directory=True)
    return inbox


def scanned(inbox: Path, recursive: bool = True) -> set[str]:
    return {str(p.relative_to(inbox)) for p in scan(inbox_at(inbox, recursive=recursive))}


class TestScan:
    def test_recursive(self, tree: Path) -> None:
        """A recursive scan finds files at every depth, and names like notes.txt too (filtering comes later)."""
        assert {"a.wav", "notes.txt", "sub/b.wav", "sub/deeper/c.wav"} <= scanned(tree)

    def test_top_level_only(self, tree: Path) -> None:
        """recursive = false scans only the inbox's own files."""
        assert {"a.wav", "notes.txt"} <= scanned(tree, recursive=False)
        assert not any("/" in rel for rel in scanned(tree, recursive=False))

    def test_skips_hidden_and_state_folders(self, tree: Path) -> None:
        """Hidden folders, diarist's .diarist among them, are not entered."""
        assert not any(rel.startswith((".hidden", ".diarist")) for rel in scanned(tree))

    def test_does_not_follow_symlinked_folders(self, tree: Path) -> None:
        """A symlink to a folder is never entered (it could loop or leave the inbox)."""
        assert not any(rel.startswith("linked/") for rel in scanned(tree))

    def test_yields_files_and_links_only(self, tree: Path) -> None:
        """Regular files, and symlinks as themselves (the daemon refuses them visibly), never folders."""
        found = scanned(tree)
        assert "linked" in found and (tree / "linked").is_symlink()
        assert "sub" not in found and "sub/deeper" not in found

    def test_missing_inbox_yields_nothing(self, tmp_path: Path) -> None:
        """A missing inbox folder (an unmounted share) scans as empty instead of raising."""
        assert list(scan(inbox_at(tmp_path / "absent"))) == []
