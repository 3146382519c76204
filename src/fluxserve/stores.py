"""The seams between the service and where its state lives, one small protocol each.

Every backend (SQLite, in-memory; PostgreSQL later) implements all of them and passes the same
contract tests (``tests/backends``). Methods are synchronous: the service calls them from the
event loop for short writes and from worker threads during a run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from fluxserve.fair import FairShare
from fluxserve.keys import ApiKey
from fluxserve.records import (
    IdempotencyClaim,
    Job,
    JobStatus,
    Recovery,
    WebhookAttempt,
    WebhookDelivery,
    WebhookTarget,
)

IDEMPOTENCY_WINDOW_S = 24 * 3600
"""How long an Idempotency-Key keeps naming its job."""


REQUEUED_LOCALLY = "the server restarted while the upstream ran it: requeued here"
"""``routing.reason`` of an overflow job a restart sent back to the local queue."""


def gave_up_error(attempts: int) -> str:
    """``details.error`` of a job ended by restart recovery after ``attempts`` crashes."""
    return (
        f"the server stopped while running this job {attempts} times; "
        "it is not tried again (submit it anew if you want another try)"
    )


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class JobStore(Protocol):
    """Job rows: create, read, progress, finish, cancel, forget."""

    def create(
        self,
        job: Job,
        idempotency: IdempotencyClaim | None = None,
        webhook: WebhookTarget | None = None,
        fair: FairShare | None = None,
    ) -> Job:
        """Persist a new job, its idempotency key and its webhook registration in one
        transaction. When the key (for the job's owner) already names a job made within
        :data:`IDEMPOTENCY_WINDOW_S`, nothing is written and that job is returned; raises
        :class:`IdempotencyConflict` when the body digest differs. With ``fair``, a queued
        job's place follows fair share (:func:`fluxserve.fair.place`), else creation time."""
        ...

    def get(self, job_id: str) -> Job | None:
        """The job, whoever owns it (scoping is the service's business)."""
        ...

    def list_owned(self, owner: str | None, limit: int, before: float | None = None) -> list[Job]:
        """Up to ``limit`` jobs of ``owner`` (None: the jobs made while no key was configured),
        newest first; with ``before``, only those created before it (a page's last
        ``created_at``, for the next page)."""
        ...

    def set_progress(self, job_id: str, progress: float) -> None:
        """Record a running job's progress (0..1)."""
        ...

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        moderation: list[dict[str, Any]] | None = None,
    ) -> bool:
        """End a job, only if it is still running under ``attempt``; False otherwise.
        ``moderation``, when given, replaces the job's moderation audit trail."""
        ...

    def cancel_queued(self, job_id: str) -> bool:
        """End a queued job as cancelled; False if it is not queued."""
        ...

    def request_cancel(self, job_id: str) -> None:
        """Ask the worker running a job to stop it."""
        ...

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was asked for the job."""
        ...

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of jobs that ended before ``cutoff`` (unix time)."""
        ...

    def delete(self, job_id: str) -> None:
        """Forget a job and everything recorded about it (its webhook delivery too)."""
        ...


class JobQueue(Protocol):
    """The order in which queued jobs run.

    Policy: a job's place is decided when it is created (:func:`fluxserve.fair.place`): by
    fair share, or by creation time; either way plus ``batch_delay_s`` for jobs nobody waits
    on (BFL), so a synchronous OpenAI call overtakes recent BFL jobs but not old ones.

    Two lanes: the local queue (engines here), and the jobs an overflow sent to an upstream
    (``Job.route`` ``upstream``), which only the upstream lane takes.
    """

    def claim_next(self, route: str | None = None) -> Job | None:
        """Mark the first queued job of ``route``'s lane (None: the local queue) running (one
        more attempt) and return it."""
        ...

    def peek(self, limit: int) -> list[Job]:
        """The first ``limit`` queued jobs of the local queue in queue order, left queued (for
        batching and for preparing the next job while one runs)."""
        ...

    def reroute(self, job_id: str, attempt: int, routing: dict[str, Any]) -> bool:
        """Put a running job that its upstream did not accept back in the local queue, at its
        place, with ``routing`` saying why, if ``attempt`` still holds it."""
        ...

    def local_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """``model``'s queued + running jobs on the local queue, and the engine seconds of its
        last ``recent`` jobs made here (the overflow estimate)."""
        ...

    def upstream_load(self, model: str, recent: int = 20) -> tuple[int, list[float]]:
        """Queued + running jobs in the upstream lane (every model's: they share its slots),
        and the engine seconds of ``model``'s last ``recent`` jobs made there (the overflow
        estimate's other side)."""
        ...

    def claim_queued(self, job_id: str, worker: str) -> Job | None:
        """Mark this job running (one more attempt, by ``worker``) if it is still queued;
        None if it is not (another worker took it, or it was cancelled)."""
        ...

    def position(self, job_id: str) -> int | None:
        """How many queued jobs run before this one; None if it is not queued."""
        ...

    def depth(self) -> int:
        """How many jobs are queued."""
        ...

    def recover(self, max_attempts: int) -> Recovery:
        """After a restart: jobs left running by a dead process go back in the queue, unless
        they have been tried ``max_attempts`` times already, in which case they end as Error."""
        ...


class WebhookStore(Protocol):
    """Durable webhook deliveries and their attempts."""

    def activate(self, job_id: str) -> bool:
        """The job has ended: its delivery (if it has one) is due now. True if there is one."""
        ...

    def due(self, limit: int = 16) -> list[WebhookDelivery]:
        """Claim deliveries that are due (pending -> sending)."""
        ...

    def recover(self) -> None:
        """After a restart: deliveries that were in flight are due again."""
        ...

    def activate_ended(self, ended_before: float) -> int:
        """Deliveries still waiting for a job that ended before ``ended_before`` (its process
        died between storing the end and activating the webhook) are due now; how many."""
        ...

    def record(
        self,
        job_id: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_s: float,
        state: str,
        next_at: float,
    ) -> None:
        """Log an attempt and move the delivery to ``state`` (pending, delivered or failed)."""
        ...

    def attempts(self, job_id: str) -> tuple[WebhookDelivery | None, list[WebhookAttempt]]:
        """The job's delivery and every attempt so far."""
        ...


class KeyStore(Protocol):
    """API keys, kept only as hashes."""

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the secret, which is never stored."""
        ...

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included."""
        ...

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no active key with that id."""
        ...

    def any_active(self) -> bool:
        """Whether at least one key is active (may be cached for about a second)."""
        ...

    def ever_created(self) -> bool:
        """Whether a key was ever created in this store, revoked ones included: once true, the
        server needs a valid key on every request (see ``api.auth``)."""
        ...

    def is_revoked(self, secret: str) -> bool:
        """Whether ``secret`` is a key that was revoked."""
        ...

    def verify(self, secret: str) -> str | None:
        """The key id when ``secret`` is an active key, else None."""
        ...


class EventBus(Protocol):
    """Live job events between processes: an SSE stream on one node shows the events of a job
    running on another. In-process (nothing to carry) or PostgreSQL LISTEN/NOTIFY.

    Delivery is best effort and in order per sender; job state never depends on it (the
    store is the truth, and a stream's terminal event is rebuilt from the job row)."""

    def send(self, job_id: str, event_id: int, type: str, data: dict[str, Any]) -> None:
        """Carry an event published here to every other process (call on the event loop)."""
        ...

    def watch(self, job_id: str) -> None:
        """Say that someone here streams ``job_id`` (its worker then makes previews)."""
        ...

    def watched(self, job_id: str) -> bool:
        """Whether a stream in another process watches ``job_id`` (any thread)."""
        ...

    async def run(
        self,
        deliver: Callable[[str, int, str, dict[str, Any]], None],
        watching: Callable[[], Iterable[str]],
    ) -> None:
        """Until cancelled: pass events from other processes to ``deliver`` (on the loop), and
        keep announcing the jobs ``watching()`` names."""
        ...


class LocalBus:
    """The in-process :class:`EventBus`: one process holds the
    API and the worker, so there is nobody else to tell."""

    def send(self, job_id: str, event_id: int, type: str, data: dict[str, Any]) -> None:
        """Nothing to carry."""

    def watch(self, job_id: str) -> None:
        """Nobody else to tell."""

    def watched(self, job_id: str) -> bool:
        """No other process streams anything."""
        return False

    async def run(
        self,
        deliver: Callable[[str, int, str, dict[str, Any]], None],
        watching: Callable[[], Iterable[str]],
    ) -> None:
        """Nothing arrives from elsewhere."""


class JobClaims(Protocol):
    """Claiming one named job, for dispatch that hands out job ids (procrastinate) rather than
    letting workers pick from the queue (``JobQueue.claim_next``)."""

    def claim(self, job_id: str, worker: str) -> Job | None:
        """Mark the job running under one more attempt by ``worker`` (a name, kept with the
        job), if it is queued or was left running by a worker that is gone; None if it has
        ended or does not exist."""
        ...

    def give_up(self, job_id: str) -> bool:
        """End a job that was started ``max_attempts`` times without finishing as Error, with
        :func:`gave_up_error`; False if it has ended already."""
        ...


class JobDispatch(Protocol):
    """Hands jobs to engine workers in any process (PostgreSQL: procrastinate), and brings back
    the jobs of workers that are gone. Without one (SQLite), workers in the server's process
    take jobs with ``JobQueue.claim_next``."""

    claims: JobClaims
    """How a worker claims the job it was handed."""

    async def run_worker(
        self,
        name: str,
        models: Sequence[str],
        run: Callable[[str], Awaitable[None]],
        route: str | None = None,
    ) -> None:
        """Run one engine worker until cancelled: for each job of ``models`` (on ``route``'s
        lane; None: the local queue) it is handed, ``await run(job_id)``; on cancellation,
        finish the current job first."""
        ...

    async def reap_forever(self, max_attempts: int, ended: Callable[[str], None]) -> None:
        """Until cancelled: send the jobs of workers that stopped beating back to the queue, or
        end those started ``max_attempts`` times as Error and call ``ended(job_id)``."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class SqlDatabase(Protocol):
    """What the SQL stores (keys, accounts) need of a database (both backends' ``Database``
    classes have it)."""

    def transaction(self) -> AbstractContextManager[Any]:
        """A connection inside one write transaction."""
        ...

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> Sequence[Any]:
        """Rows of a read query, indexable by column name."""
        ...
