"""Cloud job decisions: batching queued files and judging jobs in flight (diarist.policies.jobs)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.jobs import Batch, BatchSettings, QueuedFile, Verdict, judge_job, plan_batches

A10G, T4 = "a10g-small", "t4-small"
WINDOW = 10.0


def f(file_id: int, *, flavor: str = A10G, duration: float = 60.0, queued_at: float = 0.0) -> QueuedFile:
    return QueuedFile(file_id, flavor, duration, queued_at)


def plan(queue: list[QueuedFile], *, now: float, in_flight: int = 0, **settings: Any) -> list[Batch]:
    settings.setdefault("window", WINDOW)
    return plan_batches(queue, in_flight=in_flight, now=now, settings=BatchSettings(**settings))


def ids(batches: list[Batch]) -> list[tuple[int, ...]]:
    return [b.file_ids for b in batches]


class TestPlanBatches:
    def test_empty_queue_gives_no_batch(self) -> None:
        """Nothing queued, nothing to submit."""
        assert plan([], now=1000.0) == []

    def test_waits_until_the_window_has_elapsed(self) -> None:
        """Files younger than the window wait for company."""
        assert plan([f(1, queued_at=0.0), f(2, queued_at=3.0)], now=WINDOW - 0.1) == []

    def test_leaves_once_the_oldest_file_has_waited_the_window(self) -> None:
        """At exactly the window the oldest file and its company leave together, and the reason says why."""
        (batch,) = plan([f(1, queued_at=0.0), f(2, queued_at=3.0)], now=WINDOW)
        assert batch.file_ids == (1, 2)
        assert batch.flavor == A10G
        assert batch.audio_seconds == 120.0
        assert "waited 10 s" in batch.reason and "window 10 s" in batch.reason

    def test_full_batch_leaves_before_the_window(self) -> None:
        """``max_files`` files fill a batch that leaves at once; the rest keeps waiting."""
        queue = [f(1), f(2), f(3)]
        (batch,) = plan(queue, now=1.0, max_files=2)
        assert batch.file_ids == (1, 2)
        assert batch.reason == "batch full"

    def test_full_batch_of_exactly_max_files_leaves(self) -> None:
        """A batch that has exactly ``max_files`` files is full, even with nobody left behind."""
        assert ids(plan([f(1), f(2)], now=0.0, max_files=2)) == [(1, 2)]

    def test_audio_limit_splits_batches(self) -> None:
        """A file that would push a batch past ``max_audio_seconds`` starts the next batch."""
        queue = [f(1, duration=60), f(2, duration=30), f(3, duration=20)]
        batches = plan(queue, now=100.0, max_audio_seconds=100)
        assert ids(batches) == [(1, 2), (3,)]
        assert [b.audio_seconds for b in batches] == [90, 20]

    def test_audio_limit_makes_the_batch_full(self) -> None:
        """When the next file does not fit, the batch cannot grow: it leaves before the window."""
        (batch,) = plan([f(1, duration=60), f(2, duration=50)], now=1.0, max_audio_seconds=100)
        assert batch.file_ids == (1,)
        assert batch.reason == "batch full"

    def test_audio_exactly_at_the_limit_fits(self) -> None:
        """``max_audio_seconds`` is inclusive."""
        assert ids(plan([f(1, duration=60), f(2, duration=40)], now=100.0, max_audio_seconds=100)) == [(1, 2)]

    def test_single_file_longer_than_the_audio_limit_goes_alone(self) -> None:
        """A file longer than ``max_audio_seconds`` is never stuck: it goes in a batch of its own."""
        queue = [f(1, duration=500), f(2, duration=10)]
        batches = plan(queue, now=100.0, max_audio_seconds=100)
        assert ids(batches) == [(1,), (2,)]
        assert batches[0].audio_seconds == 500

    def test_lone_long_file_goes_after_the_window(self) -> None:
        """Alone in the queue, a file longer than the limit still leaves once it has waited the window."""
        assert ids(plan([f(1, duration=500)], now=WINDOW, max_audio_seconds=100)) == [(1,)]

    def test_flavors_are_never_mixed(self) -> None:
        """Each flavor gets its own batch; a batch runs on one kind of hardware."""
        queue = [f(1), f(2, flavor=T4), f(3), f(4, flavor=T4)]
        batches = plan(queue, now=100.0)
        assert [(b.flavor, b.file_ids) for b in batches] == [(A10G, (1, 3)), (T4, (2, 4))]

    def test_young_flavor_does_not_hold_back_an_old_one(self) -> None:
        """A flavor still gathering does not block another flavor whose window has elapsed."""
        queue = [f(1, queued_at=95.0), f(2, flavor=T4, queued_at=0.0)]
        assert [(b.flavor, b.file_ids) for b in plan(queue, now=100.0)] == [(T4, (2,))]

    def test_gathering_batch_uses_no_slot(self) -> None:
        """With one free slot, a flavor that is still gathering leaves the slot to a ready one."""
        queue = [f(1, queued_at=95.0), f(2, flavor=T4, queued_at=0.0)]
        assert ids(plan(queue, now=100.0, max_concurrent=1)) == [(2,)]

    @pytest.mark.parametrize(
        ("max_concurrent", "in_flight", "expected"),
        [
            (3, 0, [(1,), (2,), (3,)]),
            (3, 1, [(1,), (2,)]),
            (3, 2, [(1,)]),
            (3, 3, []),
            (3, 7, []),
            (0, 0, []),
        ],
    )
    def test_free_slots_limit_the_batches(self, max_concurrent: int, in_flight: int, expected: list) -> None:
        """At most ``max_concurrent - in_flight`` batches leave, oldest first; none when no slot is free."""
        queue = [f(n) for n in range(1, 6)]
        batches = plan(queue, now=100.0, in_flight=in_flight, max_concurrent=max_concurrent, max_files=1)
        assert ids(batches) == expected

    def test_queue_order_is_kept(self) -> None:
        """Files keep their queue order inside a batch, whatever their ids."""
        queue = [f(7, queued_at=0.0), f(3, queued_at=1.0), f(5, queued_at=2.0), f(4, queued_at=3.0)]
        assert ids(plan(queue, now=100.0, max_files=3)) == [(7, 3, 5), (4,)]

    def test_a_file_queued_before_the_head_is_not_pulled_in(self) -> None:
        """Company is only files queued no earlier than the batch's oldest file."""
        queue = [f(1, queued_at=50.0), f(2, queued_at=10.0)]
        assert ids(plan(queue, now=100.0)) == [(1,), (2,)]


class TestJudgeJob:
    def judge(self, stage: str, message: str | None = None, **kwargs: Any):
        kwargs.setdefault("submitted_at", 0.0)
        kwargs.setdefault("deadline_at", 3600.0)
        kwargs.setdefault("now", 60.0)
        kwargs.setdefault("scheduling_limit", 900.0)
        return judge_job(stage, message, **kwargs)

    @pytest.mark.parametrize("stage", ["COMPLETED", "completed"])
    def test_completed_is_collected(self, stage: str) -> None:
        """A completed job's results are collected (stage names are case-insensitive)."""
        judgement = self.judge(stage)
        assert judgement.verdict is Verdict.COLLECT
        assert judgement.reason == "the job completed"

    def test_completed_past_the_deadline_is_still_collected(self) -> None:
        """A terminal stage wins over our clock: results that exist are used."""
        assert self.judge("COMPLETED", now=10_000.0).verdict is Verdict.COLLECT

    @pytest.mark.parametrize("stage", ["ERROR", "CANCELED", "CANCELLED", "DELETED"])
    def test_terminal_failures_fail_with_the_hub_message(self, stage: str) -> None:
        """A job that ended without results fails, and the Hub's message is in the reason."""
        judgement = self.judge(stage, "node lost")
        assert judgement.verdict is Verdict.FAILED
        assert judgement.reason == f"the job ended in {stage}: node lost"

    def test_terminal_failure_without_message(self) -> None:
        """No message from the Hub: the reason still names the stage."""
        assert self.judge("ERROR").reason == "the job ended in ERROR"

    @pytest.mark.parametrize("stage", ["RUNNING", "SCHEDULING", "UPDATING"])
    def test_alive_past_the_deadline_is_cancelled(self, stage: str) -> None:
        """Past its deadline a job the Hub should have stopped is cancelled rather than trusted."""
        judgement = self.judge(stage, now=3600.5)
        assert judgement.verdict is Verdict.CANCEL
        assert judgement.reason == f"the job is still {stage} past its deadline"

    def test_at_the_deadline_still_waits(self) -> None:
        """The deadline itself is not yet past."""
        assert self.judge("RUNNING", now=3600.0).verdict is Verdict.WAIT

    def test_scheduling_past_the_limit_by_our_clock_is_cancelled(self) -> None:
        """Without the Hub's figure, time since submit counts as scheduling time."""
        judgement = self.judge("SCHEDULING", submitted_at=100.0, now=1100.0)
        assert judgement.verdict is Verdict.CANCEL
        assert "waited 1000 s for hardware (limit 900 s)" in judgement.reason
        assert "no capacity" in judgement.reason

    def test_scheduling_uses_the_hub_figure_when_given(self) -> None:
        """The Hub's scheduling seconds beat our clock, in both directions."""
        long_ago = self.judge("SCHEDULING", submitted_at=0.0, now=1000.0, scheduling_seconds=100.0)
        assert long_ago.verdict is Verdict.WAIT
        just_now = self.judge("SCHEDULING", submitted_at=990.0, now=1000.0, scheduling_seconds=950.0)
        assert just_now.verdict is Verdict.CANCEL
        assert "waited 950 s" in just_now.reason

    def test_scheduling_at_the_limit_waits(self) -> None:
        """The scheduling limit itself is not yet exceeded."""
        assert self.judge("SCHEDULING", scheduling_seconds=900.0).verdict is Verdict.WAIT

    def test_running_before_the_deadline_waits(self) -> None:
        """A running job waits, however long it has been since submit (the limit is for scheduling only)."""
        judgement = self.judge("RUNNING", now=3000.0)
        assert judgement.verdict is Verdict.WAIT
        assert judgement.reason == "the job is RUNNING"


# -- properties --------------------------------------------------------------------------------------------

FLAVORS = (A10G, T4, "cpu-basic")


@st.composite
def queues(draw: st.DrawFn) -> list[QueuedFile]:
    n = draw(st.integers(0, 14))
    file_ids = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    return [
        QueuedFile(
            file_id,
            draw(st.sampled_from(FLAVORS)),
            draw(st.floats(0, 2000, allow_nan=False)),
            draw(st.floats(0, 200, allow_nan=False)),
        )
        for file_id in file_ids
    ]


batch_settings = st.builds(
    BatchSettings,
    max_files=st.integers(1, 6),
    max_audio_seconds=st.floats(1, 3000, allow_nan=False),
    window=st.floats(0, 100, allow_nan=False),
    max_concurrent=st.integers(0, 5),
)


class TestPlanBatchesProperties:
    @given(queue=queues(), s=batch_settings, in_flight=st.integers(0, 6), now=st.floats(0, 400, allow_nan=False))
    def test_invariants(self, queue: list[QueuedFile], s: BatchSettings, in_flight: int, now: float) -> None:
        """Limits, one flavor per batch, no file twice, at most the free slots, queue order inside a batch."""
        batches = plan_batches(queue, in_flight=in_flight, now=now, settings=s)
        by_id = {q.file_id: q for q in queue}
        position = {q.file_id: i for i, q in enumerate(queue)}

        assert len(batches) <= max(s.max_concurrent - in_flight, 0)
        every = [i for b in batches for i in b.file_ids]
        assert len(every) == len(set(every)), "a file is in two batches"
        for b in batches:
            members = [by_id[i] for i in b.file_ids]
            assert 1 <= len(members) <= s.max_files
            assert {m.flavor for m in members} == {b.flavor}
            assert b.audio_seconds == pytest.approx(sum(m.duration_seconds for m in members))
            if len(members) > 1:
                assert b.audio_seconds <= s.max_audio_seconds + 1e-9
            assert [position[i] for i in b.file_ids] == sorted(position[i] for i in b.file_ids)
            head = members[0]
            assert b.reason == "batch full" or now - head.queued_at >= s.window

    @given(queue=queues(), s=batch_settings, in_flight=st.integers(0, 6))
    def test_the_oldest_file_is_never_starved(self, queue: list[QueuedFile], s: BatchSettings, in_flight: int) -> None:
        """With a free slot, a head of the queue that has waited the window leaves in the first batch."""
        if not queue or s.max_concurrent - in_flight < 1:
            return
        now = queue[0].queued_at + s.window + 0.001  # float sums: q + w - q may round below w
        batches = plan_batches(queue, in_flight=in_flight, now=now, settings=s)
        assert batches and batches[0].file_ids[0] == queue[0].file_id

    @given(queue=queues(), s=batch_settings)
    def test_everything_ready_is_planned_when_slots_abound(self, queue: list[QueuedFile], s: BatchSettings) -> None:
        """Long after every window, with a slot per file, every queued file is in exactly one batch."""
        s = BatchSettings(s.max_files, s.max_audio_seconds, s.window, max_concurrent=len(queue))
        batches = plan_batches(queue, in_flight=0, now=1000.0, settings=s)
        assert sorted(i for b in batches for i in b.file_ids) == sorted(q.file_id for q in queue)
