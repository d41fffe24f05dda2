"""Taking files in: which names count, when a file is complete, claiming and moving (diarist intake)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.handlers.intake import (
    NAME_MAX_BYTES,
    StabilityTracker,
    beside,
    claim,
    move_aside,
    move_no_clobber,
    processing_dir,
    sha256_of,
    state_dir,
    unique_path,
)
from diarist.policies.intake import AUDIO_EXTENSIONS, NAS_FOLDERS, STATE_DIR_NAME, ignore_reason

IGNORED: list[tuple[str, str]] = [
    # (path relative to the inbox, a word the reason contains)
    (".DS_Store", "system"),
    ("._x.wav", "system"),
    ("Thumbs.db", "Thumbs.db"),
    ("THUMBS.DB", "Thumbs.db"),
    ("desktop.ini", "desktop.ini"),
    ("x.part", "*.part"),
    ("x.wav.part", "*.part"),
    ("x.PART", "*.part"),
    ("x.tmp", "*.tmp"),
    ("x.crdownload", "*.crdownload"),
    ("~$x.wav", "~$*"),
    (".~lock.x#", "system"),
    ("x.wav.swp", "*.swp"),
    ("sub/.hidden.wav", "system"),
    (".x/a.wav", "hidden folder '.x'"),
    ("sub/.x/a.wav", "hidden folder '.x'"),
    (".diarist/processing/a.wav", "hidden folder '.diarist'"),
    (".diarist/done/sub/a.wav", "hidden folder '.diarist'"),
    ("notes.txt", "not an audio extension (.txt)"),
    ("meeting.rttm", "not an audio extension (.rttm)"),
    ("README", "not an audio extension (none)"),
    ("sub/noext", "none"),
]

ACCEPTED = ["a.wav", "A.MP3", "sub/dir/b.m4a", "x.flac", "y.ogg", "z.opus", "w.webm", "v.mp4", "Meeting 2024.Wav"]


class TestIgnoreReason:
    @pytest.mark.parametrize(("rel_path", "reason"), IGNORED)
    def test_ignored(self, rel_path: str, reason: str) -> None:
        """System, temporary, hidden and non-audio files are not candidates, with a reason saying why."""
        got = ignore_reason(rel_path)
        assert got is not None and reason in got

    @pytest.mark.parametrize("rel_path", ACCEPTED)
    def test_accepted(self, rel_path: str) -> None:
        """Audio files anywhere below the inbox are candidates, whatever the extension's case."""
        assert ignore_reason(rel_path) is None

    @pytest.mark.parametrize(
        ("rel_path", "patterns", "matched"),
        [
            ("draft-1.wav", ["*draft*"], "*draft*"),
            ("sub/draft.wav", ["*draft*"], "*draft*"),
            ("archive/old.wav", ["*draft*", "archive/*"], "archive/*"),
            ("archive/deep/old.wav", ["archive/*"], "archive/*"),
            ("keep/archive.wav", ["archive/*"], None),
            ("final.wav", ["*draft*", "archive/*"], None),
        ],
    )
    def test_user_patterns(self, rel_path: str, patterns: list[str], matched: str | None) -> None:
        """User globs match the file name or the whole relative path, and the reason names the pattern."""
        expected = None if matched is None else f"matches ignore pattern {matched!r}"
        assert ignore_reason(rel_path, patterns) == expected

    @given(
        folder=st.from_regex(r"\.[A-Za-z0-9_]{1,8}", fullmatch=True),
        above=st.lists(st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True), max_size=3),
        ext=st.sampled_from(sorted(AUDIO_EXTENSIONS)),
    )
    def test_anything_under_a_hidden_folder_is_ignored(self, folder: str, above: list[str], ext: str) -> None:
        """Any file below a hidden folder (at any depth) is ignored, even a good audio file."""
        rel_path = "/".join([*above, folder, f"a{ext}"])
        kind = "system" if folder.casefold() in {f.casefold() for f in NAS_FOLDERS} else "hidden"
        assert ignore_reason(rel_path) == f"inside {kind} folder {folder!r}"

    @pytest.mark.parametrize("folder", NAS_FOLDERS)
    def test_nas_system_folders_are_never_looked_into(self, folder: str) -> None:
        """What a NAS, a file server or a sync tool keeps in a share (thumbnails, recycle bins, snapshots) is
        ignored at any depth and in any case; an inbox's own ignore_folders replaces the list."""
        for rel_path in (f"{folder}/a.wav", f"team/{folder}/deep/a.wav", f"{folder.upper()}/a.wav"):
            assert (
                ignore_reason(rel_path)
                == f"inside system folder {rel_path.split('/')[-2 if 'deep' not in rel_path else -3]!r}"
            )
        assert ignore_reason(f"{folder}/a.wav", folders=()) in (None, f"inside hidden folder {folder!r}")

    def test_state_folder_is_hidden(self) -> None:
        """diarist's own folder starts with a dot, so its contents are never candidates."""
        assert STATE_DIR_NAME.startswith(".")


class Clock:
    """A fake monotonic clock that tests move forward by hand."""

    def __init__(self) -> None:
        self.now = [1000.0]

    def __call__(self) -> float:
        return self.now[0]

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds


def seconds(value: float) -> Callable[[Path], float]:
    """The same quiet period for every file."""
    return lambda _path: value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> StabilityTracker:
    return StabilityTracker(clock=clock)


def grow(path: Path, data: bytes = b"x") -> None:
    with open(path, "ab") as f:
        f.write(data)


class TestStabilityTracker:
    def test_stable_only_after_quiet_period(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """A file is returned only once it has not changed for the configured seconds."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"abc")
        tracker.observe(path)
        assert tracker.poll(seconds(5)) == []
        clock.advance(4.9)
        assert tracker.poll(seconds(5)) == []
        clock.advance(0.1)
        assert tracker.poll(seconds(5)) == [path]

    def test_zero_seconds_is_immediately_stable(self, tmp_path: Path, tracker: StabilityTracker) -> None:
        """With stability_seconds = 0 a file is stable at the first poll."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"abc")
        tracker.observe(path)
        assert tracker.poll(seconds(0)) == [path]

    def test_size_change_rearms(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """A size change restarts the quiet period."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"abc")
        tracker.observe(path)
        clock.advance(4)
        grow(path)
        assert tracker.poll(seconds(5)) == []
        clock.advance(4)
        assert tracker.poll(seconds(5)) == []
        clock.advance(1)
        assert tracker.poll(seconds(5)) == [path]

    def test_mtime_change_rearms(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """An mtime change with the same size (a rewrite in place) restarts the quiet period."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"abc")
        tracker.observe(path)
        clock.advance(4)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert tracker.poll(seconds(5)) == []
        clock.advance(4.5)
        assert tracker.poll(seconds(5)) == []
        clock.advance(0.5)
        assert tracker.poll(seconds(5)) == [path]

    def test_replaced_by_rename_with_same_size_and_mtime_rearms(
        self, tmp_path: Path, clock: Clock, tracker: StabilityTracker
    ) -> None:
        """A share with coarse mtimes: a file renamed into place over another, same size and mtime, still re-arms."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"old")
        st = path.stat()
        tracker.observe(path)
        clock.advance(4)
        other = tmp_path / "a.wav.part"
        other.write_bytes(b"new")
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(other, path)
        assert tracker.poll(seconds(5)) == []
        clock.advance(4.9)
        assert tracker.poll(seconds(5)) == []
        clock.advance(0.1)
        assert tracker.poll(seconds(5)) == [path]

    def test_shrinking_file_rearms(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """An overwrite that truncates (the file shrinks) restarts the quiet period."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"x" * 100)
        tracker.observe(path)
        clock.advance(4)
        path.write_bytes(b"y" * 10)
        assert tracker.poll(seconds(5)) == []
        clock.advance(5)
        assert tracker.poll(seconds(5)) == [path]

    def test_observe_again_without_change_keeps_timer(
        self, tmp_path: Path, clock: Clock, tracker: StabilityTracker
    ) -> None:
        """Seeing an unchanged file again (events, rescans) does not restart its timer."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"abc")
        tracker.observe(path)
        clock.advance(3)
        tracker.observe(path)
        clock.advance(2)
        assert tracker.poll(seconds(5)) == [path]

    def test_slow_copy_is_never_given_up(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """A file that keeps growing for hours stays tracked, and is picked up when it finally stops."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"")
        tracker.observe(path)
        for _ in range(120):
            clock.advance(60)
            grow(path)
            assert tracker.poll(seconds(5)) == []
            assert path in tracker
        clock.advance(5)
        assert tracker.poll(seconds(5)) == [path]

    def test_deleted_file_is_dropped(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """A file deleted before it settles is forgotten, never returned."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"abc")
        tracker.observe(path)
        path.unlink()
        clock.advance(10)
        assert tracker.poll(seconds(5)) == []
        assert path not in tracker and len(tracker) == 0

    def test_observe_missing_file_is_noop(self, tmp_path: Path, tracker: StabilityTracker) -> None:
        """Observing a path that no longer exists (a deleted event) tracks nothing."""
        tracker.observe(tmp_path / "gone.wav")
        assert len(tracker) == 0

    def test_each_stable_file_returned_once(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """poll returns a stable file once and then stops tracking it."""
        paths = [tmp_path / f"{n}.wav" for n in range(3)]
        for path in paths:
            path.write_bytes(b"abc")
            tracker.observe(path)
        clock.advance(5)
        assert sorted(tracker.poll(seconds(5))) == paths
        clock.advance(100)
        assert tracker.poll(seconds(5)) == [] and len(tracker) == 0

    def test_per_file_seconds(self, tmp_path: Path, clock: Clock, tracker: StabilityTracker) -> None:
        """The quiet period is asked per file (each inbox has its own stability_seconds)."""
        fast, slow = tmp_path / "fast.wav", tmp_path / "slow.wav"
        for path in (fast, slow):
            path.write_bytes(b"abc")
            tracker.observe(path)
        clock.advance(2)
        assert tracker.poll(lambda p: 1 if p == fast else 30) == [fast]
        assert slow in tracker

    def test_forget(self, tmp_path: Path, tracker: StabilityTracker) -> None:
        """forget stops tracking a path (and forgetting an unknown path is fine)."""
        path = tmp_path / "a.wav"
        path.write_bytes(b"abc")
        tracker.observe(path)
        tracker.forget(path)
        tracker.forget(tmp_path / "never.wav")
        assert len(tracker) == 0


class TestClaim:
    def test_moves_atomically(self, tmp_path: Path) -> None:
        """claim renames the file into the (created) processing folder and returns True."""
        source = tmp_path / "in/a.wav"
        source.parent.mkdir()
        source.write_bytes(b"audio")
        target = processing_dir(tmp_path / "in", "host-1") / "a.wav"
        assert claim(source, target) is True
        assert not source.exists() and target.read_bytes() == b"audio"
        assert target.parent == tmp_path / "in" / STATE_DIR_NAME / "processing" / "host-1"

    def test_vanished_source_returns_false(self, tmp_path: Path) -> None:
        """If the file is gone (another host claimed it first) claim returns False."""
        assert claim(tmp_path / "gone.wav", tmp_path / "p/gone.wav") is False
        assert not (tmp_path / "p/gone.wav").exists()

    def test_lost_reply_still_counts_as_ours(self, tmp_path: Path) -> None:
        """NFS answers ENOENT to a retried rename that already happened: the target is ours anyway."""
        target = tmp_path / "mine/a.wav"
        target.parent.mkdir()
        target.write_bytes(b"audio")
        assert claim(tmp_path / "a.wav", target)

    def test_second_claim_loses(self, tmp_path: Path) -> None:
        """Of two claims on one file only the first succeeds."""
        source = tmp_path / "a.wav"
        source.write_bytes(b"audio")
        assert claim(source, tmp_path / "host-1/a.wav") is True
        assert claim(source, tmp_path / "host-2/a.wav") is False


class TestUniquePath:
    def test_free_path_unchanged(self, tmp_path: Path) -> None:
        """A free path is returned as is."""
        assert unique_path(tmp_path / "x.wav") == tmp_path / "x.wav"

    def test_never_overwrites(self, tmp_path: Path) -> None:
        """Taken names get " (2)", " (3)" ... before the extension."""
        (tmp_path / "x.wav").write_bytes(b"1")
        assert unique_path(tmp_path / "x.wav") == tmp_path / "x (2).wav"
        (tmp_path / "x (2).wav").write_bytes(b"2")
        assert unique_path(tmp_path / "x.wav") == tmp_path / "x (3).wav"

    def test_no_extension(self, tmp_path: Path) -> None:
        """A name without extension gets the counter at its end."""
        (tmp_path / "x").write_bytes(b"1")
        assert unique_path(tmp_path / "x") == tmp_path / "x (2)"


class TestMoveAside:
    @pytest.mark.parametrize("bucket", ["done", "failed"])
    def test_into_bucket_mirroring_path(self, tmp_path: Path, bucket: str) -> None:
        """A claimed file moves to <inbox>/.diarist/<bucket>/<rel_path>, folders created."""
        claimed = processing_dir(tmp_path, "h") / "sub/a.wav"
        claimed.parent.mkdir(parents=True)
        claimed.write_bytes(b"audio")
        target = move_aside(claimed, tmp_path, bucket, "sub/a.wav")
        assert target == state_dir(tmp_path) / bucket / "sub/a.wav" == tmp_path / ".diarist" / bucket / "sub/a.wav"
        assert target.read_bytes() == b"audio" and not claimed.exists()

    def test_keeps_earlier_file(self, tmp_path: Path) -> None:
        """A second file with the same name is renamed, the archived one is kept."""
        for content in (b"first", b"second"):
            claimed = tmp_path / "claimed.wav"
            claimed.write_bytes(content)
            last = move_aside(claimed, tmp_path, "done", "a.wav")
        assert last == tmp_path / ".diarist/done/a (2).wav"
        assert (tmp_path / ".diarist/done/a.wav").read_bytes() == b"first"
        assert last.read_bytes() == b"second"


class TestMoveNoClobber:
    def test_never_replaces_an_existing_file(self, tmp_path: Path) -> None:
        """The target exists: the file gets the next free name and both survive."""
        (tmp_path / "a.wav").write_bytes(b"there")
        src = tmp_path / "src.wav"
        src.write_bytes(b"new")
        assert move_no_clobber(src, tmp_path / "a.wav") == tmp_path / "a (2).wav"
        assert (tmp_path / "a.wav").read_bytes() == b"there" and not src.exists()

    def test_without_hard_links_a_placeholder_reserves_the_name(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where link() is refused (SMB, FAT) the move still never replaces anything."""

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", refuse)
        (tmp_path / "a.wav").write_bytes(b"there")
        src = tmp_path / "src.wav"
        src.write_bytes(b"new")
        assert move_no_clobber(src, tmp_path / "a.wav") == tmp_path / "a (2).wav"
        assert (tmp_path / "a (2).wav").read_bytes() == b"new" and not src.exists()

    def test_a_vanished_source_leaves_no_placeholder(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A failed move does not leave an empty file behind in the target folder."""
        monkeypatch.setattr(os, "link", lambda *_, **__: (_ for _ in ()).throw(PermissionError(1, "no")))
        with pytest.raises(FileNotFoundError):
            move_no_clobber(tmp_path / "gone.wav", tmp_path / "out/a.wav")
        assert list((tmp_path / "out").iterdir()) == []

    @given(st.integers(1, 6))
    def test_many_moves_to_one_name_keep_every_file(self, n: int) -> None:
        """n files moved to one name: n distinct files, each with its own content."""
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            for i in range(n):
                src = root / f"src{i}"
                src.write_bytes(str(i).encode())
                move_no_clobber(src, root / "out" / "a.wav")
            contents = sorted(p.read_bytes() for p in (root / "out").iterdir())
            assert contents == sorted(str(i).encode() for i in range(n))


class TestSha256:
    @pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 1000])
    def test_matches_hashlib(self, tmp_path: Path, size: int) -> None:
        """The streamed hash equals hashlib over the whole content, across chunk boundaries."""
        data = os.urandom(size)
        path = tmp_path / "a.wav"
        path.write_bytes(data)
        assert sha256_of(path, chunk=64) == hashlib.sha256(data).hexdigest()
        assert sha256_of(path) == hashlib.sha256(data).hexdigest()


class TestBeside:
    def test_appends_the_suffix_and_keeps_within_the_name_limit(self, tmp_path: Path) -> None:
        """``x.wav`` -> ``x.wav.error.json``; a name near the limit is cut (never mid-character) to fit."""
        assert beside(tmp_path / "x.wav", ".error.json") == tmp_path / "x.wav.error.json"
        long = tmp_path / ("é" * 125 + ".wav")  # 254 bytes
        cut = beside(long, ".error.json")
        assert len(cut.name.encode()) <= NAME_MAX_BYTES and cut.name.endswith("é.error.json")
        cut.write_text("{}")  # the filesystem takes it
