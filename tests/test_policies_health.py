"""Watchdog health, the STATUS= line and the release-on-stop decision (pure)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.health import should_release, stale_components, status_line


class TestStaleComponents:
    def test_fresh_components_are_healthy(self):
        """Every heartbeat within its limit: nothing is stale."""
        assert stale_components({"worker": 95.0, "intake": 99.0}, 100.0, {"worker": 10, "intake": 5}) == []

    def test_old_and_missing_heartbeats_are_stale(self):
        """A heartbeat older than its limit, or none at all, names the component."""
        beats = {"worker": 50.0, "intake": 99.0}
        assert stale_components(beats, 100.0, {"worker": 10, "intake": 5, "cloud": 60}) == ["cloud", "worker"]

    def test_components_without_a_limit_are_ignored(self):
        """Only the limited components are judged."""
        assert stale_components({"other": 0.0}, 100.0, {}) == []


class TestStatusLine:
    def test_counts_and_budget(self):
        """One line: waiting, running, cloud jobs with their files, budget left."""
        line = status_line(waiting=3, running=1, cloud_files=5, cloud_jobs=2, budget_left=Decimal("4.2"), stale=[])
        assert line == "3 waiting; 1 running locally; 2 cloud jobs (5 files); budget left $4.20"
        assert "\n" not in line

    def test_stalled_components_come_last(self):
        """A wedged thread is visible in systemctl status."""
        line = status_line(waiting=0, running=0, cloud_files=0, cloud_jobs=0, budget_left=None, stale=["worker"])
        assert line.endswith("STALLED: worker") and "budget" not in line


class TestShouldRelease:
    def test_past_the_deadline_always_releases(self):
        """No time left: give the file back whatever the progress."""
        assert should_release(elapsed=10, fraction=0.99, time_left=0)

    def test_projection_decides(self):
        """Half done after 10 s needs 10 s more: fits in 15, not in 5."""
        assert not should_release(elapsed=10, fraction=0.5, time_left=15)
        assert should_release(elapsed=10, fraction=0.5, time_left=5)

    def test_no_progress_waits_for_the_deadline(self):
        """Without any progress there is nothing to project from."""
        assert not should_release(elapsed=100, fraction=0.0, time_left=1)

    @given(
        elapsed=st.floats(0, 1e4),
        fraction=st.floats(0.001, 1.0),
        left=st.floats(0.001, 1e4),
        more=st.floats(0, 1e4),
    )
    def test_more_time_never_turns_keep_into_release(self, elapsed, fraction, left, more):
        """Monotone in the time left."""
        if not should_release(elapsed=elapsed, fraction=fraction, time_left=left):
            assert not should_release(elapsed=elapsed, fraction=fraction, time_left=left + more)
