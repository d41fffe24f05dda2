"""Leases between hosts on one share: token changes, not clocks, keep a host alive (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.leases import Sighting, expired, observe


class TestObserve:
    def test_a_changed_token_restarts_the_lease(self):
        """A new token is a sign of life: its sighting starts now."""
        seen = observe({"a": Sighting("1", 0.0)}, {"a": "2"}, 50.0)
        assert seen == {"a": Sighting("2", 50.0)}

    def test_an_unchanged_token_keeps_its_age(self):
        """The same token read again does not make a host younger."""
        seen = observe({"a": Sighting("1", 0.0)}, {"a": "1"}, 50.0)
        assert seen == {"a": Sighting("1", 0.0)}

    def test_hosts_that_disappear_are_dropped(self):
        """Nothing left on the share: nothing to track."""
        assert observe({"a": Sighting("1", 0.0)}, {}, 10.0) == {}


class TestExpired:
    def test_unchanged_for_a_lease_expires(self):
        """A lease with no change is over; one second less is not."""
        seen = {"a": Sighting("1", 0.0), "b": Sighting("1", 1.0)}
        assert expired(seen, 60.0, 60.0, me="x") == ["a"]

    def test_never_expires_itself(self):
        """A host never takes back its own claims."""
        assert expired({"me": Sighting(None, 0.0)}, 1e9, 1.0, me="me") == []

    def test_a_folder_without_heartbeat_expires_one_lease_after_first_seen(self):
        """Claims of a host that never wrote a heartbeat are taken back, after a full lease."""
        seen = observe({}, {"ghost": None}, 100.0)
        assert expired(seen, 159.0, 60.0, me="x") == []
        assert expired(seen, 160.0, 60.0, me="x") == ["ghost"]

    @given(st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=30), st.floats(1, 100))
    def test_a_host_that_renews_more_often_than_the_lease_never_expires(self, tokens, lease):
        """Renewing every lease/2 with a fresh token: never presumed dead."""
        seen: dict[str, Sighting] = {}
        now = 0.0
        for i, _ in enumerate(tokens):
            seen = observe(seen, {"a": str(i)}, now)
            assert expired(seen, now + lease / 2, lease, me="x") == []
            now += lease / 2
