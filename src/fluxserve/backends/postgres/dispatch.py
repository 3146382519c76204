"""Dispatch through procrastinate: a job reaches an engine worker on any machine.

- Submit: the job row and a procrastinate job (task ``fluxserve.run_job``, on the queue of its
  model) are written in one transaction (:class:`DispatchingJobStore`), so a job is never
  queued without its dispatch nor dispatched without its row.
- Workers: one procrastinate worker per engine (per GPU), listening only to the queues of the
  models that engine has loaded; the task claims the job row and runs it. Heartbeats are
  procrastinate's (every quarter of ``stall_timeout_s``).
- Stalled jobs: a worker whose heartbeat is older than ``stall_timeout_s`` is gone (killed,
  machine lost). Every process runs :meth:`ProcrastinateDispatch.reap_forever`, which retries
  exactly those jobs (``JobManager.get_stalled_jobs`` / ``retry_job_by_id_async``), one reaper
  at a time under an advisory lock; a job started ``max_attempts`` times ends as Error instead
  (and a worker handed one anyway ends it too). Nothing is re-queued merely because a node
  restarted.
- Completion stays conditional on the attempt (``finish(job_id, attempt, ...)``), so a job is
  completed once even if a worker that was only slow comes back.

The job row stays the truth for the API (status, position, progress, result); procrastinate's
table is the dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from procrastinate import App, PsycopgConnector, SyncPsycopgConnector
from procrastinate import jobs as procrastinate_jobs
from procrastinate.utils import utcnow
from psycopg import Connection

from fluxserve.backends.postgres.db import PostgresDatabase
from fluxserve.backends.postgres.jobs import PostgresJobStore
from fluxserve.fair import Place
from fluxserve.records import Job, Recovery
from fluxserve.stores import JobClaims

log = logging.getLogger("fluxserve.dispatch")
TASK_NAME = "fluxserve.run_job"
PRIORITY_EPOCH = 1_735_689_600
"""2025-01-01: priorities count seconds from here (an int4 lasts until 2093)."""
REAPER_LOCK = 742052


def queue_name(model: str, route: str | None = None) -> str:
    """The procrastinate queue of a model's jobs (``route`` upstream: those its overflow sends
    to the upstream, which the upstream lanes take)."""
    return f"fluxserve.{model}" if route is None else f"fluxserve.{route}.{model}"


def priority(sort_at: float) -> int:
    """procrastinate runs higher priorities first: an earlier place in our queue (creation
    time, or the fair-share start tag, plus the batch delay for BFL jobs) is a higher priority,
    at one-second resolution; ties go in submission order."""
    return -round(sort_at - PRIORITY_EPOCH)


class DispatchingJobStore(PostgresJobStore):
    """The PostgreSQL job store whose ``create`` also defers the job's procrastinate task, in
    the same transaction (procrastinate's ``defer_job`` with our connection)."""

    def __init__(self, db: PostgresDatabase, batch_delay_s: float = 60.0) -> None:
        super().__init__(db, batch_delay_s)
        self._deferrer = App(connector=SyncPsycopgConnector())
        self._deferrer.open(db.pool)

    def _enqueued(self, c: Connection[dict[str, Any]], job: Job, where: Place) -> None:
        self._deferrer.job_manager.defer_job(
            procrastinate_jobs.Job(
                id=None,
                queue=queue_name(job.spec.model, job.route),
                priority=priority(where.sort_at),
                lock=None,
                queueing_lock=None,
                task_name=TASK_NAME,
                task_kwargs={"job_id": job.id},
            ),
            connection=c,
        )

    def _take_dispatched(self, c: Connection[dict[str, Any]], job_id: str) -> bool:
        """A claim by name (``claim_queued``) takes a queued job only while the job's
        procrastinate task still waits, and cancels that task in the same transaction: no
        worker is handed it too. A task being handed out right now is locked and skipped: the
        job stays with it. (Workers do not batch dispatched jobs: see ``Worker.run_dispatched``.)"""
        task = c.execute(
            "SELECT id FROM procrastinate_jobs WHERE task_name = %s AND status = 'todo'"
            " AND args->>'job_id' = %s FOR UPDATE SKIP LOCKED",
            (TASK_NAME, job_id),
        ).fetchone()
        if task is None:
            return False
        c.execute("UPDATE procrastinate_jobs SET status = 'cancelled' WHERE id = %s", (task["id"],))
        return True

    def recover(self, max_attempts: int) -> Recovery:
        """Nothing at start: jobs other nodes are running are theirs. Jobs of workers that are
        really gone come back through :meth:`ProcrastinateDispatch.reap`."""
        return Recovery([], [])


class ProcrastinateDispatch:
    """Engine workers and the stalled-job reaper for one process (see the module docs)."""

    def __init__(self, url: str, store: PostgresJobStore, stall_timeout_s: float = 30.0) -> None:
        self.url = url
        self.store = store
        self.claims: JobClaims = store
        self.stall_timeout_s = stall_timeout_s
        self._control: App | None = None

    @property
    def heartbeat_s(self) -> float:
        """How often workers beat: four beats fit in a stall timeout."""
        return max(0.25, self.stall_timeout_s / 4)

    def _app(self, pool_size: int) -> App:
        return App(connector=PsycopgConnector(conninfo=self.url, min_size=1, max_size=pool_size))

    async def run_worker(
        self,
        name: str,
        models: Sequence[str],
        run: Callable[[str], Awaitable[None]],
        route: str | None = None,
    ) -> None:
        """Run one engine worker until cancelled (then it finishes its job and unregisters):
        take jobs of ``models`` only, one at a time, and ``await run(job_id)`` for each. If it
        stops otherwise (the database went away), it starts again after a pause."""
        queues = [queue_name(m, route) for m in models]
        while True:
            app = self._app(pool_size=4)

            @app.task(name=TASK_NAME)
            async def run_job(job_id: str) -> None:
                await run(job_id)

            try:
                async with app.open_async():
                    log.info("engine worker %s takes %s", name, ", ".join(models) or "nothing")
                    await app.run_worker_async(
                        queues=queues,
                        name=name,
                        concurrency=1,
                        install_signal_handlers=False,
                        update_heartbeat_interval=self.heartbeat_s,
                        stalled_worker_timeout=self.stall_timeout_s,
                        fetch_job_polling_interval=2.0,
                        abort_job_polling_interval=2.0,
                        delete_jobs="successful",
                    )
                # Only cancellation should end it: procrastinate stops a worker by itself when a
                # side task (heartbeat, listener) fails, e.g. while the database is away.
                log.error("engine worker %s stopped (database lost?); starting again in 2 s", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine worker %s lost the database; starting again in 2 s", name)
            await asyncio.sleep(2.0)

    async def reap(self, max_attempts: int) -> Recovery:
        """Deal with the jobs of workers that are gone: retry each (another worker runs it),
        or, if it was started ``max_attempts`` times, end it as Error. Only one process reaps
        at a time (an advisory lock), so a stalled job is dealt with once."""
        app = await self._control_app()
        recovery = Recovery([], [])
        # The lock lives as long as this transaction: however the reap ends, it is let go.
        pool = app.connector.pool  # type: ignore[attr-defined]
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (REAPER_LOCK,))
            got = await cur.fetchone()
            if not got or not got[0]:
                return recovery
            stalled = await app.job_manager.get_stalled_jobs(
                task_name=TASK_NAME, seconds_since_heartbeat=self.stall_timeout_s
            )
            for pjob in stalled:
                await self._reap_one(app, pjob, max_attempts, recovery)
        if recovery.requeued:
            await asyncio.to_thread(self.store.requeue, recovery.requeued)
            log.warning("re-queued job(s) whose worker is gone: %s", ", ".join(recovery.requeued))
        if recovery.failed:
            log.error(
                "ended job(s) started %d times without finishing: %s",
                max_attempts,
                ", ".join(recovery.failed),
            )
        return recovery

    async def _reap_one(
        self, app: App, pjob: procrastinate_jobs.Job, max_attempts: int, recovery: Recovery
    ) -> None:
        assert pjob.id is not None
        job_id = str(pjob.task_kwargs["job_id"])
        job = await asyncio.to_thread(self.store.get, job_id)
        try:
            if job is None or job.terminal:  # it ended (or is gone); only the dispatch was left
                await app.job_manager.finish_job_by_id_async(
                    pjob.id, status=procrastinate_jobs.Status.SUCCEEDED, delete_job=True
                )
            elif job.attempts >= max_attempts:
                await app.job_manager.finish_job_by_id_async(
                    pjob.id, status=procrastinate_jobs.Status.FAILED, delete_job=False
                )
                if await asyncio.to_thread(self.store.give_up, job_id):
                    recovery.failed.append(job_id)
            else:
                await app.job_manager.retry_job_by_id_async(pjob.id, retry_at=utcnow())
                recovery.requeued.append(job_id)
        except Exception as exc:  # it moved on meanwhile (finished, retried)
            log.info("stalled dispatch %s of job %s left alone: %s", pjob.id, job_id, exc)

    async def reap_forever(self, max_attempts: int, ended: Callable[[str], None]) -> None:
        """Reap every third of the stall timeout until cancelled, calling ``ended(job_id)`` for
        each job ended; failures are logged."""
        while True:
            try:
                for job_id in (await self.reap(max_attempts)).failed:
                    ended(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stalled-job check failed; trying again")
            await asyncio.sleep(max(0.5, self.stall_timeout_s / 3))

    async def _control_app(self) -> App:
        if self._control is None:
            app = self._app(pool_size=2)
            await app.open_async()
            self._control = app
        return self._control

    async def close(self) -> None:
        """Close the reaper's connections."""
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.close_async()
            self._control = None
