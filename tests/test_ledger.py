"""The credit ledger: append-only, and its sum always equals the balance, also under
concurrency (threads on two connections to one SQLite file; 200 concurrent submissions to a
real server with random cancels and jobs failed by a crash)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_accounts import cli, new_key
from test_jobs_live import Receiver

from conftest import Server
from fluxserve.accounts import AccountStore, BonusRule, Grant
from fluxserve.accounts.ledger import Accounting, charged
from fluxserve.accounts.store import SQLITE_SCHEMA, account_store
from fluxserve.backends.postgres import PostgresDatabase
from fluxserve.backends.sqlite import Database
from fluxserve.catalog import ModelCatalog
from fluxserve.records import Job, JobStatus
from fluxserve.spec import GenerationSpec


def _store(path: Path) -> AccountStore:
    db = Database(path)
    with db.transaction() as c:
        for statement in SQLITE_SCHEMA.split(";"):
            if statement.strip():
                c.execute(statement)
    return AccountStore(db, "", "?")


def test_ledger_sum_equals_balance_under_concurrent_holds_ends_and_topups(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    stores = [_store(path), _store(path)]  # two connections, as two server processes have
    stores[0].create_account("team", credits=300.0, max_active=None)
    grant = Grant("k1", "team", ("generate",))
    outcomes: dict[str, str] = {}
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(n)
        store = stores[n % 2]
        for i in range(25):
            job = f"job-{n}-{i}"
            why = store.hold(grant, job, "flux-dev", rng.choice([2.5, 5.0, 40.0]))
            if why is not None:
                assert why == "credits"
                with lock:
                    outcomes[job] = "refused"
                continue
            charge = rng.random() < 0.5
            assert store.end(job, charge=charge)
            assert not stores[(n + 1) % 2].end(job, charge=not charge)  # a second end: no change
            with lock:
                outcomes[job] = "settled" if charge else "released"
            if rng.random() < 0.05:
                store.topup("team", 1.0, BonusRule())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 200
    balance, total = stores[0].balance_check("team")
    assert balance == pytest.approx(total)
    assert balance is not None and balance >= 0
    entries = stores[0].entries("team")
    spent = sum(e.cost for e in entries if e.kind == "settle")
    added = sum(e.amount for e in entries if e.kind in ("topup", "bonus"))
    assert balance == pytest.approx(added - spent)
    assert {"settled", "released", "refused"} <= set(outcomes.values())


def _job(status: JobStatus, details: dict[str, Any] | None = None) -> Job:
    spec = GenerationSpec(
        model="flux-dev",
        prompt="p",
        width=256,
        height=256,
        steps=4,
        guidance=3.5,
        seed=1,
        output_format="png",
    )
    return Job(id="j", status=status, spec=spec, created_at=0.0, details=details)


def test_the_charging_rule() -> None:
    assert charged(_job(JobStatus.READY))
    assert charged(_job(JobStatus.CONTENT_MODERATED))  # made, then withheld: the work was done
    assert not charged(_job(JobStatus.REQUEST_MODERATED))  # refused before any work
    assert not charged(_job(JobStatus.ERROR, {"error": "boom"}))
    assert not charged(_job(JobStatus.ERROR, {"error": "cancelled", "steps_done": 0}))
    assert charged(_job(JobStatus.ERROR, {"error": "cancelled", "steps_done": 1, "steps": 4}))


async def _submit_all(base: str, key: str, n: int) -> list[httpx.Response]:
    h = {"x-key": key}
    rng = random.Random(7)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> httpx.Response:
            body = {"prompt": "a red circle", "seed": i, "steps": rng.choice([2, 3])}
            r = await client.post(f"{base}/v1/flux-dev", json=body, headers=h)
            if r.status_code == 200 and rng.random() < 0.25:  # a random cancel, queued or running
                await client.post(f"{base}/v1/jobs/{r.json()['id']}/cancel", headers=h)
            return r

        return await asyncio.gather(*(one(i) for i in range(n)))


def _final(srv: Server, key: str, job: str) -> dict[str, Any]:
    for _ in range(2400):
        r = httpx.get(f"{srv.base_url}/v1/get_result", params={"id": job}, headers={"x-key": key}).json()
        if r["status"] != "Pending":
            return dict(r)
        threading.Event().wait(0.05)
    raise TimeoutError(job)


def test_200_concurrent_submissions_with_cancels_and_failures_keep_the_ledger_whole(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(start=False)
    # flux-dev at 256x256 costs 2.5 credits: 3.75 USD pays for 150 of the 200.
    cli(srv, "accounts", "create", "team", "--credits", "3.75", "--max-active", "1000")
    key = new_key(srv, "team")
    srv.start()
    answers = asyncio.run(_submit_all(srv.base_url, key, 200))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 402}, {r.text for r in answers if r.status_code not in (200, 402)}
    accepted = [r.json()["id"] for r in answers if r.status_code == 200]
    assert 150 <= len(accepted) <= 200 and codes.count(402) == 200 - len(accepted)
    # Failures: the server dies mid-run; after a restart with max_attempts 1, the jobs it was
    # running end as Error (and are released).
    srv.kill()
    srv.env["FLUXSERVE_MAX_ATTEMPTS"] = "1"
    srv.start()
    finals = {job: _final(srv, key, job) for job in accepted}
    statuses = {f["status"] for f in finals.values()}
    assert "Ready" in statuses and "Error" in statuses
    crashed = [
        f for f in finals.values() if f["status"] == "Error" and f["details"].get("error") != "cancelled"
    ]
    assert crashed, "the job running when the server died ends as Error"
    srv.stop()

    db = sqlite3.connect(srv.data_dir / "fluxserve.sqlite3")
    (balance,) = db.execute("SELECT balance FROM accounts WHERE name = 'team'").fetchone()
    (total,) = db.execute("SELECT SUM(amount) FROM ledger WHERE account = 'team'").fetchone()
    assert balance == pytest.approx(total) and balance >= 0
    rows = db.execute(
        "SELECT job_id, kind FROM ledger WHERE account = 'team' AND job_id IS NOT NULL"
    ).fetchall()
    kinds: dict[str, list[str]] = {}
    for job_id, kind in rows:
        kinds.setdefault(job_id, []).append(kind)
    assert set(kinds) == set(accepted)  # refused submissions left no trace
    for job, f in finals.items():
        ends = sorted(kinds[job])
        assert len(ends) == 2 and ends[0] == "hold", (job, ends)
        if f["status"] == "Ready":
            assert ends[1] == "settle"
        elif f["details"] and f["details"].get("error") != "cancelled":
            assert ends[1] == "release", (job, f)
    settled = sum(1 for k in kinds.values() if "settle" in k)
    assert balance == pytest.approx(375.0 - 2.5 * settled)


def test_max_models_have_their_own_active_limit(tmp_path: Path) -> None:
    store = _store(tmp_path / "ledger.sqlite3")
    store.create_account("team", credits=None, max_active=24)
    grant = Grant("k1", "team", ("generate",))
    limit = ("-max", 6)
    for i in range(6):
        assert store.hold(grant, f"max-{i}", "flux-2-max", 7.0, limit) is None
    assert store.hold(grant, "max-6", "flux-2-max", 7.0, limit) == "active_model"
    assert store.hold(grant, "dev-0", "flux-dev", 2.5, limit) is None  # other models still run
    assert store.active("team") == 7
    assert store.end("max-0", charge=True)
    assert store.hold(grant, "max-6", "flux-2-max", 7.0, limit) is None
    balance, total = store.balance_check("team")
    assert balance is None and total == 0  # unlimited: holds of 0 credits, the cost beside them
    assert [e.cost for e in store.entries("team", kinds=("settle",))] == [7.0]


def test_a_restart_ends_the_credit_holds_a_crash_left_open(make_server) -> None:  # type: ignore[no-untyped-def]
    rx = Receiver(fail=0)
    srv = make_server(start=False, allow_private_urls="1")
    cli(srv, "accounts", "create", "team", "--credits", "1")
    key = new_key(srv, "team")
    srv.start()
    body = {"prompt": "a red circle", "steps": 2, "webhook_url": rx.url, "webhook_secret": "s"}
    job = httpx.post(f"{srv.base_url}/v1/flux-dev", json=body, headers={"x-key": key}).json()["id"]
    assert _final(srv, key, job)["status"] == "Ready"
    rx.wait_for(1)
    srv.stop()
    # What a SIGKILL at the wrong moment leaves: a Ready job whose settle was never written and
    # whose webhook still waits, a hold whose job was never stored (an hour old), and one made
    # a moment ago (a submission another node may still be storing).
    db = sqlite3.connect(srv.data_dir / "fluxserve.sqlite3")
    now = time.time()
    with db:
        db.execute("DELETE FROM ledger WHERE job_id = ? AND kind = 'settle'", (job,))
        db.execute("UPDATE webhook_deliveries SET state = 'waiting' WHERE job_id = ?", (job,))
        for lost, at in (("lost-job", now - 3600), ("new-job", now)):
            db.execute(
                "INSERT INTO ledger (account, key_id, job_id, model, kind, amount, cost, at)"
                " VALUES ('team', NULL, ?, 'flux-dev', 'hold', -2.5, 2.5, ?)",
                (lost, at),
            )
            db.execute("UPDATE accounts SET balance = balance - 2.5 WHERE name = 'team'")
            inputs = srv.data_dir / "files" / "inputs" / lost  # stored before the job row
            inputs.mkdir(parents=True)
            (inputs / "0.png").write_bytes(b"an input image")
    db.close()

    srv.start()
    rx.wait_for(2)
    srv.stop()
    assert json.loads(rx.calls[-1][1])["status"] == "Ready"
    db = sqlite3.connect(srv.data_dir / "fluxserve.sqlite3")
    kinds: dict[str, list[str]] = {}
    for job_id, kind in db.execute("SELECT job_id, kind FROM ledger WHERE job_id IS NOT NULL ORDER BY id"):
        kinds.setdefault(job_id, []).append(kind)
    assert kinds == {job: ["hold", "settle"], "lost-job": ["hold", "release"], "new-job": ["hold"]}
    assert not (srv.data_dir / "files" / "inputs" / "lost-job").exists()
    assert (srv.data_dir / "files" / "inputs" / "new-job" / "0.png").exists()
    (balance,) = db.execute("SELECT balance FROM accounts WHERE name = 'team'").fetchone()
    (total,) = db.execute("SELECT SUM(amount) FROM ledger WHERE account = 'team'").fetchone()
    assert balance == pytest.approx(total) == pytest.approx(100.0 - 2.5 - 2.5)


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_reconcile_ends_only_the_holds_a_crash_left_open(engine: str, tmp_path: Path, request: Any) -> None:
    if engine == "postgres":
        pg = PostgresDatabase(request.getfixturevalue("postgres_server").new_database())
        pg.upgrade()
        store = account_store(pg, postgres=True)
    else:
        store = _store(tmp_path / "ledger.sqlite3")
    store.create_account("team", credits=100.0, max_active=None)
    accounting = Accounting(store, ModelCatalog([]))
    grant = Grant("k1", "team", ("generate",))
    jobs = {
        "ready": replace(_job(JobStatus.READY), id="ready"),
        "failed": replace(_job(JobStatus.ERROR, {"error": "boom"}), id="failed"),
        "queued": replace(_job(JobStatus.QUEUED), id="queued"),
        "settled": replace(_job(JobStatus.READY), id="settled"),
    }
    for job_id in (*jobs, "lost"):  # "lost": a submission that died before storing its job
        assert store.hold(grant, job_id, "flux-dev", 2.5) is None
    assert store.end("settled", charge=True)
    time.sleep(0.01)
    orphan_before = time.time()
    time.sleep(0.01)
    assert store.hold(grant, "in-flight", "flux-dev", 2.5) is None  # may still be storing its job

    for attempt in range(2):  # a second pass changes nothing
        done = accounting.reconcile(jobs.get, held_before=time.time(), orphan_before=orphan_before)
        assert sorted(done.ended) == (["failed", "ready"] if attempt == 0 else [])
        assert done.orphans == (["lost"] if attempt == 0 else [])
        ends = {e.job_id: e.kind for e in store.entries("team", kinds=("settle", "release"))}
        assert ends == {"settled": "settle", "ready": "settle", "failed": "release", "lost": "release"}
    balance, total = store.balance_check("team")
    assert balance == pytest.approx(total) == pytest.approx(100.0 - 2.5 * 4)  # queued, in-flight held


def test_the_retention_sweep_releases_an_orphaned_hold_while_the_server_runs(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(start=False, sweep_interval_s="0.3")
    cli(srv, "accounts", "create", "team", "--credits", "1")
    srv.start()
    path = srv.data_dir / "fluxserve.sqlite3"
    with sqlite3.connect(path) as db:  # another node's submission that died an hour ago
        db.execute(
            "INSERT INTO ledger (account, key_id, job_id, model, kind, amount, cost, at)"
            " VALUES ('team', NULL, 'lost-job', 'flux-dev', 'hold', -2.5, 2.5, ?)",
            (time.time() - 3600,),
        )
        db.execute("UPDATE accounts SET balance = balance - 2.5 WHERE name = 'team'")
    deadline = time.monotonic() + 30
    kinds: list[str] = []
    while time.monotonic() < deadline and kinds != ["hold", "release"]:
        time.sleep(0.2)
        with sqlite3.connect(path) as db:
            kinds = [
                k for (k,) in db.execute("SELECT kind FROM ledger WHERE job_id = 'lost-job' ORDER BY id")
            ]
    assert kinds == ["hold", "release"]
    with sqlite3.connect(path) as db:
        (balance,) = db.execute("SELECT balance FROM accounts WHERE name = 'team'").fetchone()
    assert balance == pytest.approx(100.0)
