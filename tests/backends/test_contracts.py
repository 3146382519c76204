"""The contract every backend keeps: job store, queue, webhooks, keys and storage.

Each test runs once per backend (the ``backend`` and ``storage`` fixtures): SQLite, memory and a
real PostgreSQL server; local, memory and a real S3-compatible server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fluxserve.backends.memory import MemoryJobStore, MemoryKeyStore
from fluxserve.backends.postgres import (
    SCHEMA_VERSION,
    PostgresDatabase,
    PostgresJobStore,
    PostgresKeyStore,
    PostgresWebhookStore,
)
from fluxserve.backends.sqlite import Database, SQLiteJobStore, SQLiteKeyStore, SQLiteWebhookStore
from fluxserve.fair import FairShare
from fluxserve.records import IdempotencyClaim, Job, JobStatus, WebhookTarget
from fluxserve.spec import GenerationSpec
from fluxserve.storage import LocalStorage, MemoryStorage, S3Storage, SignedUrls, Storage
from fluxserve.stores import REQUEUED_LOCALLY, IdempotencyConflict


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``{"jobs", "queue", "webhooks", "keys"}`` of one backend, with a 60 s batch delay
    (PostgreSQL: a fresh database on a real server, upgraded to the current schema)."""
    if request.param == "postgres":
        pg = PostgresDatabase(request.getfixturevalue("postgres_server").new_database())
        assert pg.upgrade() == list(range(1, SCHEMA_VERSION + 1))
        pg.check()
        pg_jobs = PostgresJobStore(pg, batch_delay_s=60.0)
        yield {
            "jobs": pg_jobs,
            "queue": pg_jobs,
            "webhooks": PostgresWebhookStore(pg),
            "keys": PostgresKeyStore(pg),
        }
        pg.close()
        return
    if request.param == "memory":
        mem = MemoryJobStore(batch_delay_s=60.0)
        yield {"jobs": mem, "queue": mem, "webhooks": mem.webhooks, "keys": MemoryKeyStore()}
        return
    db = Database(tmp_path / "contract.sqlite3")
    jobs = SQLiteJobStore(db, batch_delay_s=60.0)
    yield {"jobs": jobs, "queue": jobs, "webhooks": SQLiteWebhookStore(db), "keys": SQLiteKeyStore(db)}
    db.close()


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """One storage backend, signing with a fixed secret (S3: a real nanio server on loopback)."""
    signer = SignedUrls(b"contract-secret", 600)
    if request.param == "memory":
        return MemoryStorage(signer)
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        prefix = f"contract-{uuid.uuid4().hex[:8]}"
        return S3Storage(f"s3://{s3.bucket}/{prefix}", signer, client=s3.client())
    return LocalStorage(tmp_path / "files", signer)


def spec(protocol: str = "bfl", **kw: Any) -> GenerationSpec:
    """A small valid spec."""
    fields: dict[str, Any] = dict(
        model="flux-dev",
        prompt="a red circle",
        width=256,
        height=256,
        seed=1,
        steps=2,
        guidance=3.0,
        output_format="png",
        protocol=protocol,
    )
    fields.update(kw)
    return GenerationSpec(**fields)


def job(
    job_id: str,
    owner: str | None = "k1",
    created_at: float | None = None,
    routing: dict[str, Any] | None = None,
    **kw: Any,
) -> Job:
    """A queued job."""
    return Job(job_id, JobStatus.QUEUED, spec(**kw), created_at or time.time(), owner=owner, routing=routing)


def test_create_get_roundtrip_keeps_every_field(backend: dict[str, Any]) -> None:
    s = spec(
        input_images=("inputs/a/0.png",),
        input_megapixels=0.07,
        response_format="b64_json",
        user="u1",
        partial_images=2,
        webhook_url="https://example.invalid/h",
        webhook_secret="s",
    )
    made = Job("j1", JobStatus.QUEUED, s, 123.5, moderation=[{"source": "prompt"}], owner="k1")
    backend["jobs"].create(made)
    got = backend["jobs"].get("j1")
    assert got == made
    assert backend["jobs"].get("nope") is None


def test_claim_order_interactive_first_within_the_batch_delay(backend: dict[str, Any]) -> None:
    jobs, queue = backend["jobs"], backend["queue"]
    now = time.time()
    jobs.create(job("old-bfl", created_at=now - 120))  # waited longer than the batch delay
    jobs.create(job("new-bfl", created_at=now - 1))
    jobs.create(job("openai", created_at=now, protocol="openai"))
    assert queue.depth() == 3
    assert [queue.position(i) for i in ("old-bfl", "openai", "new-bfl")] == [0, 1, 2]
    claimed = [queue.claim_next(), queue.claim_next(), queue.claim_next()]
    assert [c.id for c in claimed if c] == ["old-bfl", "openai", "new-bfl"]
    assert all(c is not None and c.status == JobStatus.RUNNING and c.attempts == 1 for c in claimed)
    assert queue.claim_next() is None and queue.depth() == 0
    assert queue.position("new-bfl") is None


def test_peek_leaves_jobs_queued_and_claim_queued_takes_one_job_once(backend: dict[str, Any]) -> None:
    jobs, queue = backend["jobs"], backend["queue"]
    now = time.time()
    for i in range(3):
        jobs.create(job(f"j{i}", created_at=now - 120 + i))
    assert [j.id for j in queue.peek(2)] == ["j0", "j1"]
    assert [j.id for j in queue.peek(10)] == ["j0", "j1", "j2"] and queue.depth() == 3
    taken = queue.claim_queued("j1", "w#0")
    assert taken is not None and taken.status == JobStatus.RUNNING and taken.attempts == 1
    assert queue.claim_queued("j1", "w#1") is None  # already taken: never run twice
    assert queue.claim_queued("nope", "w#0") is None
    assert [j.id for j in queue.peek(10)] == ["j0", "j2"]
    assert jobs.cancel_queued("j2")
    assert queue.claim_queued("j2", "w#0") is None  # cancelled while queued
    assert [c.id for c in (queue.claim_next(),) if c] == ["j0"] and queue.peek(10) == []


def test_finish_only_under_the_current_attempt(backend: dict[str, Any]) -> None:
    jobs, queue = backend["jobs"], backend["queue"]
    jobs.create(job("j"))
    claimed = queue.claim_next()
    assert claimed is not None
    jobs.set_progress("j", 0.5)
    assert jobs.get("j").progress == 0.5
    assert not jobs.finish("j", claimed.attempts + 1, JobStatus.READY, result={"files": []})
    assert jobs.finish("j", claimed.attempts, JobStatus.READY, result={"files": ["x"]}, moderation=[{"a": 1}])
    done = jobs.get("j")
    assert done.status == JobStatus.READY and done.progress == 1.0 and done.result == {"files": ["x"]}
    assert done.moderation == [{"a": 1}] and done.finished_at is not None
    assert not jobs.finish("j", claimed.attempts, JobStatus.ERROR)  # already ended


def test_cancel_queued_and_running(backend: dict[str, Any]) -> None:
    jobs, queue = backend["jobs"], backend["queue"]
    jobs.create(job("q"))
    assert jobs.cancel_queued("q")
    assert jobs.get("q").status == JobStatus.ERROR and jobs.get("q").details["error"] == "cancelled"
    assert not jobs.cancel_queued("q")
    jobs.create(job("r"))
    queue.claim_next()
    assert not jobs.cancel_queued("r")
    assert not jobs.cancel_requested("r")
    jobs.request_cancel("r")
    assert jobs.cancel_requested("r")


def test_recover_requeues_then_caps_attempts(backend: dict[str, Any]) -> None:
    jobs, queue = backend["jobs"], backend["queue"]
    jobs.create(job("j"))
    for attempt in (1, 2):
        assert queue.claim_next().attempts == attempt
        rec = queue.recover(max_attempts=3)
        assert rec.requeued == ["j"] and rec.failed == []
        assert jobs.get("j").status == JobStatus.QUEUED
    assert queue.claim_next().attempts == 3
    rec = queue.recover(max_attempts=3)
    assert rec.requeued == [] and rec.failed == ["j"]
    ended = jobs.get("j")
    assert ended.status == JobStatus.ERROR and "3 times" in ended.details["error"]


def test_recover_sends_an_upstream_job_back_to_the_local_queue(backend: dict[str, Any]) -> None:
    """A restart while an upstream ran a job: the lane may be gone, so the job comes back on the
    local queue, and its routing says why."""
    jobs, queue = backend["jobs"], backend["queue"]
    up = {"served_by": "upstream:bfl", "reason": "busy", "estimated_wait_s": 9.0}
    jobs.create(job("up-1", model="flux-dev", routing=up))
    jobs.create(job("local-1", model="flux-dev"))
    assert queue.claim_next("upstream").id == "up-1"
    assert queue.claim_next().id == "local-1"
    rec = queue.recover(max_attempts=3)
    assert sorted(rec.requeued) == ["local-1", "up-1"]
    assert queue.claim_next("upstream") is None
    back = jobs.get("up-1")
    assert back.status == JobStatus.QUEUED and back.route is None
    assert back.routing == {**up, "served_by": "local", "reason": REQUEUED_LOCALLY}
    assert jobs.get("local-1").routing is None
    assert sorted(j.id for j in queue.peek(10)) == ["local-1", "up-1"]


def test_idempotency_in_the_job_transaction(backend: dict[str, Any]) -> None:
    jobs = backend["jobs"]
    claim = IdempotencyClaim("key-1", "digest-a")
    first = jobs.create(job("a"), claim)
    assert first.id == "a"
    again = jobs.create(job("b"), claim)
    assert again.id == "a" and jobs.get("b") is None  # nothing new was written
    with pytest.raises(IdempotencyConflict):
        jobs.create(job("c"), IdempotencyClaim("key-1", "digest-b"))
    assert jobs.get("c") is None
    # Keys are per owner: another key's request with the same Idempotency-Key is its own job.
    other = jobs.create(job("d", owner="k2"), claim)
    assert other.id == "d"
    # Once the job is gone, its key names nothing and is free again.
    jobs.delete("a")
    assert jobs.create(job("e"), claim).id == "e"


def test_sweep_queries_and_delete(backend: dict[str, Any]) -> None:
    jobs, queue = backend["jobs"], backend["queue"]
    jobs.create(job("j"), webhook=WebhookTarget("https://example.invalid/h", None, "http://base"))
    c = queue.claim_next()
    jobs.finish("j", c.attempts, JobStatus.READY, result={"files": []})
    assert jobs.finished_before(time.time() - 60) == []
    assert jobs.finished_before(time.time() + 1) == ["j"]
    jobs.delete("j")
    assert jobs.get("j") is None
    assert backend["webhooks"].attempts("j") == (None, [])


def test_list_owned_newest_first_scoped_and_paged(backend: dict[str, Any]) -> None:
    jobs, queue = backend["jobs"], backend["queue"]
    now = time.time()
    for i in range(5):
        jobs.create(job(f"k1-{i}", owner="k1", created_at=now - 100 + i))
    jobs.create(job("k2-0", owner="k2", created_at=now - 50))
    jobs.create(job("open-0", owner=None, created_at=now - 40))
    c = queue.claim_next()
    jobs.finish(c.id, c.attempts, JobStatus.READY, result={"files": ["results/x/0.png"]})

    first = jobs.list_owned("k1", 3)
    assert [j.id for j in first] == ["k1-4", "k1-3", "k1-2"]
    rest = jobs.list_owned("k1", 3, before=first[-1].created_at)
    assert [j.id for j in rest] == ["k1-1", "k1-0"]
    assert jobs.list_owned("k1", 3, before=rest[-1].created_at) == []
    # Rows come back whole (status and result included), and only the owner's.
    listed = {j.id: j for j in jobs.list_owned("k1", 10)}
    assert listed[c.id] == jobs.get(c.id)
    assert [j.id for j in jobs.list_owned("k2", 10)] == ["k2-0"]
    assert [j.id for j in jobs.list_owned(None, 10)] == ["open-0"]
    assert jobs.list_owned("nobody", 10) == [] and jobs.list_owned("k1", 0) == []


def test_webhook_delivery_life(backend: dict[str, Any]) -> None:
    jobs, hooks = backend["jobs"], backend["webhooks"]
    jobs.create(job("j"), webhook=WebhookTarget("https://example.invalid/h", "sec", "http://base"))
    delivery, attempts = hooks.attempts("j")
    assert delivery is not None and delivery.state == "waiting" and attempts == []
    assert hooks.due() == []  # not before the job ends
    assert hooks.activate("j") and not hooks.activate("j")
    (due,) = hooks.due()
    assert (due.job_id, due.url, due.secret, due.base_url, due.state) == (
        "j",
        "https://example.invalid/h",
        "sec",
        "http://base",
        "pending",
    )
    assert hooks.attempts("j")[0].state == "sending" and hooks.due() == []
    hooks.recover()  # a restart: in flight -> due again, same delivery id
    (again,) = hooks.due()
    assert again.id == due.id
    hooks.record("j", 1, 500, "HTTP 500", 0.01, "pending", time.time() + 3600)
    assert hooks.due() == []
    hooks.record("j", 2, 200, None, 0.02, "delivered", 0)
    delivery, attempts = hooks.attempts("j")
    assert delivery.state == "delivered" and delivery.attempts == 2 and delivery.id == due.id
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [(1, 500, "HTTP 500"), (2, 200, None)]
    assert not hooks.activate("no-such-job")


def test_webhooks_left_waiting_by_a_crash_become_due(backend: dict[str, Any]) -> None:
    jobs, queue, hooks = backend["jobs"], backend["queue"], backend["webhooks"]
    target = WebhookTarget("https://example.invalid/h", "sec", "http://base")
    for job_id in ("ended", "running", "queued"):
        jobs.create(job(job_id), webhook=target)
    for _ in range(2):
        claimed = queue.claim_next()
        if claimed.id == "ended":  # its process dies after storing the end, before activate()
            assert jobs.finish("ended", claimed.attempts, JobStatus.READY, result={"files": []})
    ended_at = jobs.get("ended").finished_at
    assert hooks.activate_ended(ended_at) == 0  # ended at, not before: not yet
    assert hooks.activate_ended(ended_at + 1) == 1
    assert [d.job_id for d in hooks.due()] == ["ended"]
    assert hooks.activate_ended(time.time() + 1) == 0  # the others have not ended
    assert hooks.attempts("running")[0].state == "waiting" and hooks.attempts("queued")[0].state == "waiting"


def test_keys_hashed_verified_revoked(backend: dict[str, Any]) -> None:
    keys = backend["keys"]
    assert not keys.any_active() and keys.list() == []
    record, secret = keys.create("ci")
    assert secret.startswith("fsk_") and record.id in secret and record.name == "ci"
    assert keys.any_active() and keys.verify(secret) == record.id
    assert keys.verify(secret + "x") is None and keys.verify("") is None
    assert keys.revoke(record.id) and not keys.revoke(record.id)
    time.sleep(1.05)  # any_active may be cached for a second
    assert not keys.any_active() and keys.verify(secret) is None
    assert [k.revoked_at is not None for k in keys.list()] == [True]


def _claim_all(queue: Any) -> list[str]:
    order = []
    while (taken := queue.claim_next()) is not None:
        order.append(taken.id)
    return order


def test_fair_share_takes_turns_between_accounts(backend: dict[str, Any]) -> None:
    """A's batch of 10 is queued and two of it taken; B's two jobs then wait at most one of
    A's each, and A's cancelled jobs do not push A's later work back."""
    jobs, queue = backend["jobs"], backend["queue"]
    a, b = FairShare("account:a"), FairShare("account:b")
    for i in range(10):
        jobs.create(job(f"a{i}"), fair=a)
    assert [queue.claim_next().id, queue.claim_next().id] == ["a0", "a1"]
    for i in range(2):
        jobs.create(job(f"b{i}"), fair=b)
    assert queue.position("b0") == 0 and queue.position("b1") == 2
    assert [j.id for j in queue.peek(4)] == ["b0", "a2", "b1", "a3"]
    for i in range(4, 10):
        assert jobs.cancel_queued(f"a{i}")
    jobs.create(job("a-late"), fair=a)  # after a3: the cancelled a4..a9 hold no place
    assert _claim_all(queue) == ["b0", "a2", "b1", "a3", "a-late"]


def test_fair_share_weights_and_lanes(backend: dict[str, Any]) -> None:
    """Weight 2 gets two images for every one of weight 1; an OpenAI call (interactive lane)
    still goes before every queued BFL job, its own account's included."""
    jobs, queue = backend["jobs"], backend["queue"]
    light, heavy = FairShare("account:light"), FairShare("account:heavy", weight=2.0)
    for i in range(4):
        jobs.create(job(f"l{i}"), fair=light)
    for i in range(4):
        jobs.create(job(f"h{i}"), fair=heavy)
    jobs.create(job("l-openai", protocol="openai"), fair=light)
    order = _claim_all(queue)
    assert order[0] == "l-openai"
    first_six = order[1:7]
    assert sum(x.startswith("h") for x in first_six) == 4, order
    assert sorted(order) == sorted(["l-openai"] + [f"l{i}" for i in range(4)] + [f"h{i}" for i in range(4)])


def test_overflow_lanes_reroute_and_local_load(backend: dict[str, Any]) -> None:
    """A job routed upstream waits in its own lane (no local claim or peek sees it); sent back
    by ``reroute`` it joins the local queue; ``local_load`` counts local jobs and their times."""
    jobs, queue = backend["jobs"], backend["queue"]
    up = {"served_by": "upstream:bfl", "reason": "busy", "estimated_wait_s": 9.0}
    jobs.create(job("local-1", model="flux-dev"))
    jobs.create(job("up-1", model="flux-dev", routing=up))
    assert [j.id for j in queue.peek(10)] == ["local-1"] and queue.depth() == 2
    assert queue.local_load("flux-dev") == (1, [])
    taken = queue.claim_next("upstream")
    assert taken is not None and taken.id == "up-1" and taken.routing == up
    assert queue.claim_next("upstream") is None
    back = {**up, "served_by": "local", "reason": "not accepted"}
    assert not queue.reroute("up-1", taken.attempts + 1, back)  # another attempt's: refused
    assert queue.reroute("up-1", taken.attempts, back)
    assert jobs.get("up-1").routing == back and jobs.get("up-1").status == JobStatus.QUEUED
    assert [j.id for j in queue.peek(10)] == ["local-1", "up-1"]
    first = queue.claim_next()
    assert first is not None and first.id == "local-1"
    assert jobs.finish("local-1", first.attempts, JobStatus.READY, result={"files": [], "engine_s": 1.5})
    assert queue.local_load("flux-dev") == (1, [1.5])


def test_upstream_load_counts_the_whole_lane_and_times_one_model(backend: dict[str, Any]) -> None:
    """``upstream_load``: every model's jobs in the upstream lane (they share its slots), and
    the engine seconds of the asked model's jobs made there, newest first."""
    jobs, queue = backend["jobs"], backend["queue"]
    up = {"served_by": "upstream:bfl", "reason": "busy", "estimated_wait_s": 9.0}
    jobs.create(job("local-1", model="flux-dev"))
    assert queue.upstream_load("flux-dev") == (0, [])
    for i, (model, engine_s) in enumerate([("flux-dev", 4.0), ("flux-pro", 8.0), ("flux-dev", 6.0)]):
        jobs.create(job(f"done-{i}", model=model, routing=up))
        taken = queue.claim_next("upstream")
        assert taken is not None and taken.id == f"done-{i}"
        assert jobs.finish(
            taken.id, taken.attempts, JobStatus.READY, result={"files": [], "engine_s": engine_s}
        )
        time.sleep(0.01)  # distinct finish times
    jobs.create(job("waiting-dev", model="flux-dev", routing=up))
    jobs.create(job("waiting-pro", model="flux-pro", routing=up))
    assert queue.claim_next("upstream") is not None  # one running, one queued
    assert queue.upstream_load("flux-dev") == (2, [6.0, 4.0])
    assert queue.upstream_load("flux-pro") == (2, [8.0])
    assert queue.local_load("flux-dev") == (1, [])


def test_storage_put_get_stream_delete(storage: Any) -> None:
    storage.put("results/j/0.png", b"abc" * 50_000)
    storage.put("results/j/1.png", b"x")
    storage.put("results/jj/0.png", b"other job")
    assert storage.get("results/j/0.png") == b"abc" * 50_000
    assert b"".join(storage.stream("results/j/0.png", chunk_size=4096)) == b"abc" * 50_000
    assert storage.exists("results/j/1.png") and not storage.exists("results/j/2.png")
    with pytest.raises(FileNotFoundError):
        storage.get("results/j/2.png")
    with pytest.raises(FileNotFoundError):
        storage.stream("results/j/2.png")
    storage.delete_prefix("results/j")
    assert not storage.exists("results/j/0.png") and not storage.exists("results/j/1.png")
    assert storage.get("results/jj/0.png") == b"other job"


def test_storage_urls_are_signed_and_expire(storage: Any) -> None:
    storage.put("results/j/0.png", b"img")
    url = storage.url("results/j/0.png", 600)
    parts = urlsplit(url)
    assert parts.path == "/v1/files/results/j/0.png"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert storage.signer.verify("results/j/0.png", q["exp"], q["sig"]) == "ok"
    assert storage.signer.verify("results/j/1.png", q["exp"], q["sig"]) == "invalid"
    short = {k: v[0] for k, v in parse_qs(urlsplit(storage.url("results/j/0.png", 1)).query).items()}
    assert (
        storage.signer.verify("results/j/0.png", short["exp"], short["sig"], now=time.time() + 5) == "expired"
    )
