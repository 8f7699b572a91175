"""The job state machine (app/jobs.py) under random sequences of operations (issue 10, part 8).

A Hypothesis RuleBasedStateMachine drives the real functions on the real databases (SQLite and
Postgres, the `db_url` fixture) and keeps a model of what each job must be: create, claim by one
of several workers (each claim a fresh lease owner, as `worker_identity()` makes one), heartbeat,
progress, cancel, finish, release, the worker's own success path (`_record_success`), a worker
that dies, and the clock moving past leases before `reap`. app.jobs reads the time through its
`utcnow`, replaced here by a fake clock, so lease expiry is decided by the test, not by the wall
clock.

Checked after every step, row by row against the model: states move only along the allowed
transitions, a final state never changes, a running job has exactly one lease owner (and no other
state has one), attempts never exceed max_attempts, a stale owner (a lease that was reaped or
released) can move nothing, a cancel requested while running wins over the success, and neither
reap nor release puts a cancel-requested job back in the queue.

Derandomized (the same 50 programs every run) and not shrunk, so it passes or fails the same way
each time and a failure is reported in seconds. That sample was checked to catch each of these
mutations of app/jobs.py and worker/context.py: release requeueing a cancel-requested job (the
bug it found), reap requeueing one, the retry cap off by one, a lease owner not checked, a claim
of a running job, a cancel of a final job accepted, a success recorded over a pending cancel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import select

from app import jobs
from app.db import session_scope
from app.tables import FINAL_STATES, Job
from worker.context import Outcome, _record_success

LEASE = 60.0
REQUEUE_AFTER = 30.0
WORKERS = ("w1", "w2", "w3")
# Hypothesis leans to the simplest choices (the first action, the first element, 0, False), many
# of its programs mostly made of them: those choices are the ones that lead somewhere (claim a
# queued job, the current lease, past the lease).
ACTIONS = ("claim", "cancel_running", "crash", "reap", "heartbeat", "progress", "cancel", "finish", "record_success",
           "release", "advance_clock", "create_job")
ALLOWED = {
    ("queued", "running"),  # claim
    ("queued", "cancelled"),  # cancel while queued
    ("queued", "failed"),  # claim of a job out of attempts
    ("running", "queued"),  # lease expired and reaped, or released by a stopping worker
    ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


CLOCK = Clock()


@dataclass
class Model:
    """What a job must be, according to the rules applied so far."""

    max_attempts: int
    state: str = "queued"
    attempts: int = 0
    owner: str | None = None
    lease_expires: datetime | None = None
    cancel_requested: bool = False
    enqueued_at: datetime | None = None
    progress: int = 0
    owners: list[str] = field(default_factory=list)  # every lease this job ever had
    crashed: bool = False  # its current owner died: nothing but the reaper moves it now


class JobMachine(RuleBasedStateMachine):
    """One rule, `step`, that picks an action: Hypothesis's swarm testing (each example runs
    with a random subset of the rules switched off) left most of 50 examples without the short
    chains that matter here (claim, cancel, the clock past the lease, reap); with one rule every
    action stays possible at every step."""

    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, Model] = {}
        self.seen: dict[str, str] = {}  # the state each job was in at the last check
        self.claims = 0

    @initialize(max_attempts=st.lists(st.integers(1, 3), min_size=1, max_size=3))
    def start(self, max_attempts: list[int]) -> None:
        """Empty tables and a few queued jobs, so that every action has something to act on."""
        CLOCK.now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        with session_scope(self.url) as s:
            s.query(Job).delete()
        for n in max_attempts:
            self.create(n)

    @rule(action=st.sampled_from(ACTIONS), data=st.data())
    def step(self, action: str, data: st.DataObject) -> None:
        getattr(self, action)(data)

    # -- picking what to act on ----------------------------------------------------------------
    def _pick(self, data: st.DataObject, wanted) -> str:  # noqa: ANN001
        """A job the action is meant for three times in four, else any job."""
        pool = [job_id for job_id, m in self.model.items() if wanted(m)]
        if not pool or data.draw(st.integers(0, 3), label="any job") == 3:
            pool = list(self.model)
        return data.draw(st.sampled_from(pool), label="job")

    def _lease(self, data: st.DataObject) -> tuple[str, str]:
        """(job id, lease owner) for a worker's call: a live worker's current lease three times in
        four, else a stale one."""
        current = [(job_id, m.owner) for job_id, m in self.model.items() if m.state == "running" and not m.crashed]
        issued = [owner for m in self.model.values() for owner in m.owners]
        if current and data.draw(st.integers(0, 3), label="stale") < 3:
            # Half the time a job whose cancel is pending, if there is one: what its worker does
            # next (finish, succeed, release) is where cancel races live.
            pending = [(job_id, owner) for job_id, owner in current if self.model[job_id].cancel_requested]
            if pending and not data.draw(st.booleans(), label="not the cancelled one"):
                return data.draw(st.sampled_from(pending), label="lease")
            return data.draw(st.sampled_from(current), label="lease")
        # A lease that is not the job's: one it had before (reaped, released), another job's, or
        # one never granted; mostly on a running job, the one such a lease must not move.
        job_id = self._pick(data, lambda m: m.state == "running")
        others = [owner for owner in issued if owner != self.model[job_id].owner] + ["w1:never"]
        return job_id, data.draw(st.sampled_from(others), label="stale owner")

    @staticmethod
    def _owns(m: Model, owner: str) -> bool:
        return m.state == "running" and m.owner == owner

    # -- actions -------------------------------------------------------------------------------
    def create(self, max_attempts: int) -> str:
        with session_scope(self.url) as s:
            job, created = jobs.create_job(s, "ingest", {"path": f"/{len(self.model)}"}, max_attempts=max_attempts)
        assert created
        self.model[job.id] = Model(max_attempts=max_attempts, enqueued_at=CLOCK.now)
        return job.id

    def create_job(self, data: st.DataObject) -> None:
        self.create(data.draw(st.integers(1, 3), label="max_attempts"))

    def claim(self, data: st.DataObject) -> None:
        """By one of several workers, mostly a queued job (anything else must not be claimed);
        each claim is a new lease owner, as worker.context.worker_identity() makes one."""
        job_id = self._pick(data, lambda m: m.state == "queued")
        self.claims += 1
        owner = f"{data.draw(st.sampled_from(WORKERS), label='worker')}:{self.claims}"
        m = self.model[job_id]
        with session_scope(self.url) as s:
            got = jobs.claim(s, job_id, owner, LEASE)
        if m.state == "queued" and m.attempts < m.max_attempts:
            assert got is not None and got.lease_owner == owner
            m.state, m.attempts, m.owner, m.crashed = "running", m.attempts + 1, owner, False
            m.lease_expires = CLOCK.now + timedelta(seconds=LEASE)
            m.owners.append(owner)
        elif m.state == "queued":
            assert got is None
            m.state = "failed"
        else:
            assert got is None, f"claimed a {m.state} job"

    def heartbeat(self, data: st.DataObject) -> None:
        job_id, owner = self._lease(data)
        m = self.model[job_id]
        with session_scope(self.url) as s:
            still_owner, cancel = jobs.heartbeat(s, job_id, owner, LEASE)
        assert (still_owner, cancel) == (self._owns(m, owner), m.cancel_requested)
        if still_owner:
            m.lease_expires = CLOCK.now + timedelta(seconds=LEASE)

    def progress(self, data: st.DataObject) -> None:
        job_id, owner = self._lease(data)
        current = data.draw(st.integers(0, 100), label="current")
        m = self.model[job_id]
        with session_scope(self.url) as s:
            still_owner, cancel = jobs.set_progress(s, job_id, owner, current, 100, "step")
        assert (still_owner, cancel) == (self._owns(m, owner), m.cancel_requested)
        if still_owner:
            m.progress = current

    def cancel(self, data: st.DataObject) -> None:
        """Mostly an unfinished job (a final one is a 409)."""
        self._cancel(self._pick(data, lambda m: m.state not in FINAL_STATES))

    def cancel_running(self, data: st.DataObject) -> None:
        """A cancel that reaches a running job, which its worker learns of late or never (an
        action of its own, so that what follows such a cancel is explored often)."""
        self._cancel(self._pick(data, lambda m: m.state == "running" and not m.cancel_requested))

    def _cancel(self, job_id: str) -> None:
        m = self.model[job_id]
        with session_scope(self.url) as s:
            if m.state in FINAL_STATES:
                with pytest.raises(jobs.InvalidTransition):
                    jobs.request_cancel(s, job_id)
                return
            job = jobs.request_cancel(s, job_id)
        m.cancel_requested = True
        if m.state == "queued":
            m.state = "cancelled"
        assert (job.state, job.cancel_requested) == (m.state, True)

    def finish(self, data: st.DataObject) -> None:
        """The worker's failure and cancel paths (and a success with no result to commit)."""
        job_id, owner = self._lease(data)
        state = data.draw(st.sampled_from(FINAL_STATES), label="state")
        m = self.model[job_id]
        with session_scope(self.url) as s:
            done = jobs.finish(s, job_id, owner, state, error="boom" if state == "failed" else None)
        assert done == self._owns(m, owner), "a stale owner finished a job" if done else "the owner could not finish"
        if done:
            m.state, m.owner, m.lease_expires = state, None, None

    def record_success(self, data: st.DataObject) -> None:
        """worker.context's success commit: a cancel requested before it wins."""
        job_id, owner = self._lease(data)
        m = self.model[job_id]
        outcome = _record_success(self.url, job_id, owner, Outcome(result={"ok": True}))
        if not self._owns(m, owner):
            assert outcome == "lease-lost"
            return
        assert outcome == ("cancelled" if m.cancel_requested else "succeeded")
        m.state, m.owner, m.lease_expires = outcome, None, None

    def release(self, data: st.DataObject) -> None:
        """A worker stopping gracefully hands its job back (the attempt is not counted)."""
        job_id, owner = self._lease(data)
        m = self.model[job_id]
        with session_scope(self.url) as s:
            released = jobs.release(s, job_id, owner)
        assert released == self._owns(m, owner)
        if released:
            m.owner, m.lease_expires = None, None
            if m.cancel_requested:  # a cancel requested meanwhile is honoured, not queued again
                m.state = "cancelled"
            else:
                m.state, m.attempts, m.enqueued_at = "queued", m.attempts - 1, None

    def crash(self, data: st.DataObject) -> None:
        """A worker dies (SIGKILL, lost machine): its job's lease runs out unless reaped first."""
        job_id = self._pick(data, lambda m: m.state == "running" and not m.crashed)
        self.model[job_id].crashed = self.model[job_id].state == "running"

    def advance_clock(self, data: st.DataObject) -> None:
        """Time passes without a reaper pass: an expired lease can still be renewed by its owner."""
        CLOCK.now += timedelta(seconds=data.draw(st.sampled_from([61, 31, 15, 59, 1]), label="seconds"))

    def reap(self, data: st.DataObject) -> None:
        """The reaper's pass, after the clock moved on (often past the leases)."""
        CLOCK.now += timedelta(seconds=data.draw(st.sampled_from([61, 120, 31, 0]), label="seconds"))
        now = CLOCK.now
        expected_requeued, expected_failed = set(), set()
        for job_id, m in self.model.items():
            if m.state == "running" and m.lease_expires < now:
                m.owner, m.lease_expires = None, None
                if m.cancel_requested:
                    m.state = "cancelled"
                elif m.attempts >= m.max_attempts:
                    m.state = "failed"
                    expected_failed.add(job_id)
                else:
                    m.state, m.enqueued_at = "queued", now
                    expected_requeued.add(job_id)
        expected_resend = {job_id for job_id, m in self.model.items() if m.state == "queued" and (
            m.enqueued_at is None or m.enqueued_at < now - timedelta(seconds=REQUEUE_AFTER))}
        with session_scope(self.url) as s:
            report = jobs.reap(s, now=now, requeue_after_seconds=REQUEUE_AFTER)
        assert set(report.requeued) == expected_requeued
        assert set(report.failed) == expected_failed
        assert set(report.resend) == expected_resend
        assert not any(self.model[j].cancel_requested for j in report.requeued), "reap requeued a cancelled job"
        for job_id in expected_resend:
            self.model[job_id].enqueued_at = now

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def rows_match_the_model(self) -> None:
        if not self.model:
            return
        with session_scope(self.url) as s:
            rows = {j.id: j for j in s.scalars(select(Job)).all()}
        assert set(rows) == set(self.model)
        for job_id, row in rows.items():
            m = self.model[job_id]
            before = self.seen.get(job_id, "queued")
            assert before == row.state or (before, row.state) in ALLOWED, f"{before} -> {row.state}"
            assert before not in FINAL_STATES or row.state == before, f"final {before} became {row.state}"
            self.seen[job_id] = row.state
            assert (row.lease_owner is not None) == (row.state == "running"), (row.state, row.lease_owner)
            assert 0 <= row.attempts <= row.max_attempts
            assert not (row.state == "queued" and row.cancel_requested), "a cancel-requested job is queued"
            got = (row.state, row.attempts, row.lease_owner, row.cancel_requested, row.progress_current)
            assert got == (m.state, m.attempts, m.owner, m.cancel_requested, m.progress), job_id
            assert row.lease_expires_at == m.lease_expires
            assert row.enqueued_at == m.enqueued_at
            assert (row.finished_at is not None) == (row.state in FINAL_STATES)


def test_job_state_machine(db_url):
    machine = type("JobMachineOn" + db_url.split(":")[0].split("+")[0].title(), (JobMachine,), {"url": db_url})
    with mock.patch.object(jobs, "utcnow", CLOCK):
        run_state_machine_as_test(machine, settings=settings(
            max_examples=50, stateful_step_count=30, deadline=None, derandomize=True, database=None,
            # No shrinking: on a database it can take minutes; the failing program is printed as run.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_release_after_a_cancel_request_ends_cancelled(db_url):
    """What the state machine found: a worker stopping gracefully (SIGTERM) after a cancel was
    requested but before its heartbeat saw it handed the job back to the queue, still marked
    cancel_requested, so another worker ran it again. Now the release honours the cancel."""
    with session_scope(db_url) as s:
        job, _ = jobs.create_job(s, "ingest", {"path": "/x"})
        jobs.claim(s, job.id, "w", 30)
        assert jobs.request_cancel(s, job.id).state == "running"
        assert jobs.release(s, job.id, "w") is True
        row = s.get(Job, job.id)
        s.refresh(row)
        assert (row.state, row.lease_owner, row.attempts) == ("cancelled", None, 1)
        assert row.finished_at is not None
        assert jobs.claim(s, job.id, "w2", 30) is None
