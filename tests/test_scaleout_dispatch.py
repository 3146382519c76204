"""Dispatch on PostgreSQL, at the job store: each job's procrastinate task is deferred with it
(same transaction) on its model's queue, or the upstream lanes' queue for an overflow job, in the
order the queue policy and the shared fair-share tags give; jobs queued before ``db upgrade`` to
the dispatch schema get theirs; a starting node takes back nothing another node's worker runs.
The live processes (API nodes, workers) are test_scaleout.py, whose ``rows`` query helper this
uses."""

from __future__ import annotations

import time

from test_scaleout import rows

from conftest import PostgresServer


def test_dispatch_follows_the_queue_policy_and_upgrades_keep_waiting_jobs(
    postgres_server: PostgresServer,
) -> None:
    """The procrastinate task is deferred with its job (same transaction), on its model's queue,
    placed by the queue policy; jobs queued before ``db upgrade`` to the dispatch schema get theirs."""
    from psycopg.types.json import Jsonb

    from fluxserve.backends.postgres import PostgresDatabase
    from fluxserve.backends.postgres.db import MIGRATIONS, SCHEMA_VERSION
    from fluxserve.backends.postgres.dispatch import DispatchingJobStore
    from fluxserve.records import Job, JobStatus, Recovery
    from fluxserve.spec import GenerationSpec

    def job(job_id: str, protocol: str, created_at: float, model: str = "flux-dev") -> Job:
        spec = GenerationSpec(
            model=model, prompt="a red circle", width=256, height=256, seed=1, steps=2, guidance=3.0,
            output_format="png", protocol=protocol,
        )  # fmt: skip
        return Job(job_id, JobStatus.QUEUED, spec, created_at)

    url = postgres_server.new_database()
    old = PostgresDatabase(url)
    with old.transaction() as c:  # a database at schema 1, before dispatch existed
        c.execute("CREATE TABLE fluxserve_schema (version INTEGER NOT NULL)")
        c.execute(MIGRATIONS[0])  # type: ignore[arg-type]
        c.execute("INSERT INTO fluxserve_schema (version) VALUES (1)")
    now = time.time()
    waiting = job("waiting", "bfl", now - 100, "flux-kontext-pro")
    with old.transaction() as c:  # queued by a fluxserve of that schema
        c.execute(
            "INSERT INTO fluxserve_jobs (id, status, model, protocol, spec, created_at, sort_at)"
            " VALUES (%s, 'queued', %s, 'bfl', %s, %s, %s)",
            (waiting.id, waiting.spec.model, Jsonb(waiting.spec.to_json()), now - 100, now - 40),
        )
    assert old.upgrade() == list(range(2, SCHEMA_VERSION + 1))
    store = DispatchingJobStore(old, batch_delay_s=60)
    store.create(job("batch", "bfl", now))  # a BFL job queues 60 s behind its creation ...
    store.create(job("sync", "openai", now + 1))  # ... so a later OpenAI call overtakes it
    order = "SELECT args->>'job_id', queue_name FROM procrastinate_jobs ORDER BY priority DESC, id"
    dispatched = rows(url, order)
    assert dispatched == [
        ("waiting", "fluxserve.flux-kontext-pro"),
        ("sync", "fluxserve.flux-dev"),
        ("batch", "fluxserve.flux-dev"),
    ]
    # Fair share: every node defers by the same shared tags, so procrastinate's order (what
    # workers on any node take next) interleaves two accounts.
    from fluxserve.fair import FairShare

    for name in ("a0", "a1", "a2"):
        store.create(job(name, "openai", now + 2), fair=FairShare("account:a"))
    store.create(job("b0", "openai", now + 2), fair=FairShare("account:b"))  # arrives with a0
    fair_order = [r[0] for r in rows(url, order) if r[0] in ("a0", "a1", "a2", "b0")]
    assert fair_order == ["a0", "b0", "a1", "a2"], fair_order
    # A job that overflow sends upstream waits on the upstream lanes' queue; sent back (its
    # upstream did not accept it), it gets a task on its model's queue, in the same transaction.
    routed = Job(
        "routed", JobStatus.QUEUED, job("x", "bfl", now).spec, now, routing={"served_by": "upstream:bfl"}
    )
    store.create(routed)
    assert rows(url, "SELECT queue_name FROM procrastinate_jobs WHERE args->>'job_id' = 'routed'") == [
        ("fluxserve.upstream.flux-dev",)
    ]
    taken = store.claim("routed", "upstream#0@here:1")
    assert taken is not None and store.reroute("routed", taken.attempts, {"served_by": "local"})
    queues = "SELECT queue_name FROM procrastinate_jobs WHERE args->>'job_id' = 'routed' ORDER BY id"
    assert rows(url, queues) == [("fluxserve.upstream.flux-dev",), ("fluxserve.flux-dev",)]
    # A node that starts takes back nothing another node's worker runs (stalled jobs come back
    # through the heartbeat reaper only).
    assert store.claim("sync", "gpu#0@elsewhere:1") is not None
    assert store.recover(max_attempts=3) == Recovery([], [])
    running = store.get("sync")
    assert running is not None and running.status == JobStatus.RUNNING and running.attempts == 1
    old.close()
