"""The SQLite ledger: states, events, stored results, threads and locks (diarist.daemon.ledger)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diarist.daemon.ledger import FileRow, Ledger, State
from diarist.handlers.errors import TransientError

LIFECYCLE = (State.STABLE, State.CLAIMED, State.RUNNING, State.DONE)
JOIN_SECONDS = 30


class Clock:
    """A fake wall clock that tests move forward by hand."""

    def __init__(self) -> None:
        self.now = [1_700_000_000.0]

    def __call__(self) -> float:
        return self.now[0]

    def advance(self, seconds: float = 1.0) -> None:
        self.now[0] += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "state/ledger.db", clock=clock)
    yield ledger
    ledger.close()


def run_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(n)`` on ``count`` threads at once; re-raise the first error any of them hit."""
    errors: list[BaseException] = []

    def target(n: int) -> None:
        try:
            work(n)
        except BaseException as e:  # noqa: B036 - reported to the test thread below
            errors.append(e)

    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_SECONDS)
    assert not any(t.is_alive() for t in threads), "a ledger thread did not finish"
    if errors:
        raise errors[0]


class TestSchema:
    def test_creates_folder_and_tables(self, ledger: Ledger) -> None:
        """Opening a ledger creates its folder and the files, events and results tables."""
        assert ledger.path.is_file()
        assert {"files", "events", "results"} <= set(ledger.db.table_names())

    def test_wal_journal(self, ledger: Ledger) -> None:
        """The journal is WAL, so readers never wait for the writer."""
        assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_busy_timeout_is_30_seconds(self, ledger: Ledger) -> None:
        """A writer waits up to 30 s for a lock before giving up."""
        assert ledger.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000

    def test_reopen_keeps_rows(self, tmp_path: Path, ledger: Ledger) -> None:
        """Opening an existing ledger again keeps what it holds."""
        file_id = ledger.discover("/in", "a.wav")
        again = Ledger(ledger.path)
        assert again.get(file_id).rel_path == "a.wav"
        again.close()


class TestTransitions:
    def test_discover_creates_row(self, ledger: Ledger, clock: Clock) -> None:
        """discover inserts a typed row in state discovered, stamped with the clock."""
        row = ledger.get(ledger.discover("/in", "sub/a.wav"))
        assert isinstance(row, FileRow)
        assert (row.inbox, row.rel_path, row.state, row.inference_runs) == ("/in", "sub/a.wav", State.DISCOVERED, 0)
        assert row.created_at == row.updated_at == clock()

    def test_discover_reuses_unclaimed_row(self, ledger: Ledger) -> None:
        """Discovering the same unclaimed path again (rescan, restart) returns the same id."""
        first = ledger.discover("/in", "a.wav")
        assert ledger.discover("/in", "a.wav") == first
        ledger.transition(first, State.STABLE)
        assert ledger.discover("/in", "a.wav") == first
        assert ledger.discover("/other", "a.wav") != first
        assert len(ledger.events(first)) == 2

    def test_discover_after_claim_is_new_row(self, ledger: Ledger) -> None:
        """Once claimed, the same path dropped again is a new file."""
        first = ledger.discover("/in", "a.wav")
        ledger.transition(first, State.CLAIMED)
        assert ledger.discover("/in", "a.wav") != first

    def test_events_in_order(self, ledger: Ledger, clock: Clock) -> None:
        """Each transition appends one event, in order, with its time and detail."""
        file_id = ledger.discover("/in", "a.wav")
        for state in LIFECYCLE:
            clock.advance()
            ledger.transition(file_id, state, detail=f"to {state.value}")
        events = ledger.events(file_id)
        assert [e["state"] for e in events] == ["discovered", "stable", "claimed", "running", "done"]
        assert [e["detail"] for e in events[1:]] == [f"to {s.value}" for s in LIFECYCLE]
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
        assert ledger.get(file_id).state is State.DONE and ledger.get(file_id).updated_at == clock()

    def test_transition_sets_fields(self, ledger: Ledger) -> None:
        """Keyword fields are stored with the transition."""
        file_id = ledger.discover("/in", "a.wav")
        ledger.transition(file_id, State.CLAIMED, sha256="ab" * 32, size=42, claim_path="/in/.diarist/p/a.wav")
        row = ledger.get(file_id)
        assert (row.sha256, row.size, row.claim_path) == ("ab" * 32, 42, "/in/.diarist/p/a.wav")
        assert ledger.by_claim_path("/in/.diarist/p/a.wav") == row
        assert ledger.by_claim_path("/nowhere") is None

    def test_running_counts_inference_runs(self, ledger: Ledger) -> None:
        """Every move to running counts one inference run (so reruns after a crash show up)."""
        file_id = ledger.discover("/in", "a.wav")
        ledger.transition(file_id, State.RUNNING)
        ledger.transition(file_id, State.CLAIMED)
        ledger.transition(file_id, State.RUNNING)
        ledger.transition(file_id, State.DONE)
        assert ledger.get(file_id).inference_runs == 2

    def test_set_fields_adds_no_event(self, ledger: Ledger) -> None:
        """set_fields updates columns without a state change or an event."""
        file_id = ledger.discover("/in", "a.wav")
        ledger.set_fields(file_id, route="local", route_reason="small")
        assert ledger.get(file_id).state is State.DISCOVERED and len(ledger.events(file_id)) == 1
        assert ledger.recent()[0]["route"] == "local"

    def test_failed_transaction_rolls_back(self, ledger: Ledger) -> None:
        """An error inside a transaction leaves the ledger as it was."""
        file_id = ledger.discover("/in", "a.wav")
        with pytest.raises(RuntimeError), ledger.transaction() as db:
            db["files"].update(file_id, {"state": State.DONE.value})
            raise RuntimeError("crash mid-transition")
        assert ledger.get(file_id).state is State.DISCOVERED


class TestQueries:
    def test_active_is_claimed_or_running_oldest_first(self, ledger: Ledger, clock: Clock) -> None:
        """active() lists claimed and running files, the least recently updated first."""
        ids = {name: ledger.discover("/in", f"{name}.wav") for name in "abcde"}
        for name, state in [("c", State.CLAIMED), ("a", State.RUNNING), ("b", State.CLAIMED), ("d", State.DONE)]:
            clock.advance()
            ledger.transition(ids[name], state)
        assert [r.rel_path for r in ledger.active()] == ["c.wav", "a.wav", "b.wav"]

    def test_active_ties_broken_by_id(self, ledger: Ledger) -> None:
        """Files claimed in the same instant come in the order they were discovered."""
        ids = [ledger.discover("/in", f"{n}.wav") for n in range(3)]
        for file_id in reversed(ids):
            ledger.transition(file_id, State.CLAIMED)
        assert [r.id for r in ledger.active()] == ids

    def test_is_kept(self, ledger: Ledger) -> None:
        """is_kept is true for a file put back with that exact signature in that inbox, under whatever name,
        from the moment the signature is recorded; never for a failed row's."""
        file_id = ledger.discover("/in", "a.wav")
        ledger.transition(file_id, State.RUNNING, kept_signature="3:123")
        assert ledger.is_kept("/in", "3:123"), "recorded before the file goes back, before the row is done"
        ledger.transition(file_id, State.DONE)
        assert ledger.is_kept("/in", "3:123")
        assert not ledger.is_kept("/in", "4:124")
        assert not ledger.is_kept("/other", "3:123")
        other = ledger.discover("/in", "c.wav")
        ledger.transition(other, State.FAILED, kept_signature="1:1")
        assert not ledger.is_kept("/in", "1:1")

    def test_pending_stable(self, ledger: Ledger) -> None:
        """pending_stable lists stable files that already have a claim path."""
        with_claim, without = ledger.discover("/in", "a.wav"), ledger.discover("/in", "b.wav")
        ledger.transition(with_claim, State.STABLE, claim_path="/p/a.wav")
        ledger.transition(without, State.STABLE)
        assert [r.id for r in ledger.pending_stable()] == [with_claim]

    def test_counts_and_recent(self, ledger: Ledger, clock: Clock) -> None:
        """counts() tallies states; recent() lists the latest updates first."""
        a, b = ledger.discover("/in", "a.wav"), ledger.discover("/in", "b.wav")
        clock.advance()
        ledger.transition(a, State.DONE)
        assert ledger.counts() == {"discovered": 1, "done": 1}
        assert [r["id"] for r in ledger.recent()] == [a, b]
        assert len(ledger.recent(limit=1)) == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)


class TestResults:
    def test_store_and_read_back(self, ledger: Ledger) -> None:
        """store_result keeps the document and points the file's result_key at it."""
        file_id = ledger.discover("/in", "a.wav")
        doc = {"schema": "diarist.result/1", "segments": [{"start": 0.5, "end": 1.25, "speaker": "A"}]}
        ledger.store_result(file_id, "key-1", "ab" * 32, doc)
        assert ledger.result("key-1") == (file_id, doc)
        assert ledger.get(file_id).result_key == "key-1"

    def test_unknown_key(self, ledger: Ledger) -> None:
        """An unknown result key gives None."""
        assert ledger.result("nope") is None

    def test_same_key_replaced(self, ledger: Ledger) -> None:
        """Storing under an existing key replaces it (a rerun's result wins)."""
        a, b = ledger.discover("/in", "a.wav"), ledger.discover("/in", "b.wav")
        ledger.store_result(a, "k", "s", {"n": 1})
        ledger.store_result(b, "k", "s", {"n": 2})
        assert ledger.result("k") == (b, {"n": 2})

    @settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(key=st.text(min_size=1, max_size=20), doc=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
    def test_round_trip(self, ledger: Ledger, key: str, doc: dict[str, Any]) -> None:
        """Any JSON document comes back equal."""
        file_id = ledger.discover("/in", "a.wav")
        ledger.store_result(file_id, key, "s", doc)
        assert ledger.result(key) == (file_id, doc)


class TestThreads:
    def test_one_connection_per_thread(self, ledger: Ledger) -> None:
        """Each thread gets its own connection, and keeps it for its lifetime."""
        count = 4
        barrier = threading.Barrier(count)
        conns: dict[int, sqlite3.Connection] = {}

        def work(n: int) -> None:
            db = ledger.db
            assert ledger.db is db
            conns[n] = db.conn
            barrier.wait(JOIN_SECONDS)  # all connections exist at once: no id reuse
            ledger.discover("/in", f"{n}.wav")
            ledger.close()

        run_threads(count, work)
        distinct = {id(c) for c in conns.values()} | {id(ledger.db.conn)}
        assert len(distinct) == count + 1
        assert ledger.counts() == {"discovered": count}

    def test_connection_is_not_shared(self, ledger: Ledger) -> None:
        """A connection is bound to its thread: SQLite refuses it elsewhere."""
        conn = ledger.db.conn

        def work(_n: int) -> None:
            with pytest.raises(sqlite3.ProgrammingError):
                conn.execute("select 1")

        run_threads(1, work)

    def test_concurrent_writers_lose_nothing(self, tmp_path: Path) -> None:
        """8 threads x 25 files, each through its whole life, leave 200 rows and every event."""
        ledger = Ledger(tmp_path / "ledger.db")
        threads, files = 8, 25
        barrier = threading.Barrier(threads)

        def work(n: int) -> None:
            barrier.wait(JOIN_SECONDS)
            for i in range(files):
                file_id = ledger.discover("/in", f"t{n}/f{i}.wav")
                for state in LIFECYCLE:
                    ledger.transition(file_id, state)
            ledger.close()

        run_threads(threads, work)
        total = threads * files
        assert ledger.counts() == {"done": total}
        assert ledger.db.execute("select count(*) from events").fetchone()[0] == total * (1 + len(LIFECYCLE))
        assert ledger.db.execute("select sum(inference_runs) from files").fetchone()[0] == total
        per_file: dict[int, list[str]] = {}
        for file_id, state in ledger.db.execute("select file_id, state from events order by id"):
            per_file.setdefault(file_id, []).append(state)
        assert len(per_file) == total
        assert all(states == ["discovered", "stable", "claimed", "running", "done"] for states in per_file.values())
        ledger.close()


class ShortTimeoutLedger(Ledger):
    """The real ledger with a 50 ms busy timeout, so a held lock shows up quickly."""

    @property
    def db(self) -> sqlite_utils.Database:
        db = super().db
        db.conn.execute("PRAGMA busy_timeout = 50")
        return db


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class TestLocked:
    def test_lock_held_by_other_process_is_transient(self, tmp_path: Path) -> None:
        """A write lock held by another process past the busy timeout raises TransientError; later it works."""
        ledger = ShortTimeoutLedger(tmp_path / "ledger.db")
        file_id = ledger.discover("/in", "a.wav")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(ledger.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            with pytest.raises(TransientError, match="is locked") as info:
                ledger.transition(file_id, State.STABLE)
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            assert info.value.hint is not None and "retries" in info.value.hint
            assert ledger.get(file_id).state is State.DISCOVERED  # readers are not blocked (WAL)
        finally:
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.close()
            holder.wait(JOIN_SECONDS)
        ledger.transition(file_id, State.STABLE)
        assert ledger.get(file_id).state is State.STABLE
        ledger.close()
