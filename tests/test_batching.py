"""Keeping the engine busy: request batching, results stored off the engine's path, and the
next job's prompt encoded while the current job denoises (issue: GPU speed, CPU part).

The server runs in this process (uvicorn on loopback in a thread) so that the tests can run
the same requests alone on the very engine it uses, and read its prompt cache."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from conftest import free_port
from fluxserve.engines import EngineRequest
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from fluxserve.jobs.batching import BatchPolicy, batch_key, batch_mates
from fluxserve.records import Job, JobStatus
from fluxserve.server import create_app
from fluxserve.settings import Settings
from fluxserve.spec import GenerationSpec, LoraRef

# ------------------------------------------------------------------ which jobs share a batch


def job(i: int, **kw: Any) -> Job:
    fields: dict[str, Any] = dict(
        model="flux-dev",
        prompt=f"p{i}",
        width=512,
        height=512,
        seed=i,
        steps=4,
        guidance=3.0,
        output_format="png",
    )
    fields.update(kw)
    return Job(f"j{i}", JobStatus.QUEUED, GenerationSpec(**fields), float(i))


def test_batches_never_mix_models_sizes_steps_guidance_or_loras() -> None:
    first = job(0)
    queued = [
        job(1, width=768),
        job(2, model="flux-pro-1.1"),
        job(3, steps=8),
        job(4, guidance=2.0),
        job(5, loras=(LoraRef("ink", 1.0),)),
        job(6, input_images=("inputs/x/0.png",)),
        job(7, partial_images=1),
        job(8, prompt="another prompt", seed=99),
        job(9, num_images=2),
    ]
    mates = batch_mates(first, queued, limit=8)
    assert [m.id for m in mates] == ["j8", "j9"]  # prompt, seed and n may differ; nothing else
    assert batch_key(job(6, input_images=("inputs/x/0.png",)).spec) is None


def test_a_batch_holds_at_most_its_limit_in_images_in_queue_order() -> None:
    queued = [job(1, num_images=2), job(2, num_images=3), job(3), job(4)]
    assert [m.id for m in batch_mates(job(0), queued, limit=4)] == ["j1", "j3"]  # j2 would not fit
    assert batch_mates(job(0), queued, limit=1) == []
    assert batch_mates(job(0, num_images=4), queued, limit=4) == []
    assert BatchPolicy(1, {"flux-dev": 6}).limit("flux-dev") == 6
    assert BatchPolicy(1, {"flux-dev": 6}).limit("flux-pro") == 1


# ------------------------------------------------------------------ the engine's batch call


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_a_batch_gives_each_request_its_own_seeds_image(tiny_checkpoint: Path) -> None:
    engine = DiffusersFluxEngine(lambda _: tiny_checkpoint, "cpu", "float32")
    requests = [
        EngineRequest("c", prompt, 96, 64, seed=seed, steps=3, guidance=3.0, num_images=n)
        for prompt, seed, n in [("a red circle", 1, 1), ("a blue square", 2, 2), ("a red circle", 7, 1)]
    ]
    batched = engine.generate_batch(requests)
    assert [len(images) for images in batched] == [1, 2, 1]
    alone = [engine.generate(r) for r in requests]
    again = engine.generate_batch(requests)
    flat_b = [pixels(im) for images in batched for im in images]
    flat_a = [pixels(im) for images in alone for im in images]
    flat_again = [pixels(im) for images in again for im in images]
    assert all(im.shape == (64, 96, 3) for im in flat_b)
    for i, b in enumerate(flat_b):
        assert np.array_equal(b, flat_again[i])  # the same batch gives the same bytes
        # Rounding differences only, against its own lone run; far from every other image.
        assert np.abs(b - flat_a[i]).mean() < 1.0, np.abs(b - flat_a[i]).mean()
        others = [np.abs(b - a).mean() for j, a in enumerate(flat_a) if j != i]
        assert min(others) > 5.0, others


# ------------------------------------------------------------------ a server in this process


class InProcessServer:
    """The fluxserve app on a loopback port, run by uvicorn in a thread, with its engine."""

    def __init__(self, settings: Settings, engine: DiffusersFluxEngine) -> None:
        self.engine = engine
        self.checkpoint = str(settings.default_checkpoint)
        """The name the server's engine loads its models' checkpoint under."""
        self.base_url = f"http://127.0.0.1:{settings.port}"
        config = uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=settings.port)
        config.log_level = "warning"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            if self.server.started and httpx.get(self.base_url + "/readyz").status_code == 200:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def submit(self, model: str, **body: Any) -> str:
        r = httpx.post(f"{self.base_url}/v1/{model}", json=body)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def result(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = httpx.get(f"{self.base_url}/v1/get_result", params={"id": job_id}).json()
            if body["status"] not in ("Pending",):
                assert body["status"] == "Ready", body
                return body  # type: ignore[no-any-return]
            time.sleep(0.05)
        raise TimeoutError(job_id)

    def image(self, result: dict[str, Any]) -> Image.Image:
        return Image.open(io.BytesIO(httpx.get(result["result"]["sample"]).content))


@pytest.fixture
def serve(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Any]:
    servers: list[InProcessServer] = []

    def start(**fields: Any) -> InProcessServer:
        settings = Settings(
            port=free_port(),
            data_dir=tmp_path / f"data{len(servers)}",
            default_checkpoint=str(tiny_checkpoint),
            **fields,
        )
        engine = DiffusersFluxEngine(lambda _: tiny_checkpoint, "cpu", "float32")
        servers.append(InProcessServer(settings, engine))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_queued_jobs_run_as_batches_of_one_size_and_model_each_with_its_own_image(serve: Any) -> None:
    server = serve(batch_size=4)
    # The first job holds the engine while the others queue up behind it.
    first = server.submit("flux-dev", prompt="a green circle", width=512, height=512, steps=50, seed=1)
    same = [
        dict(
            prompt=f"a {colour} square",
            width=512,
            height=512,
            steps=3,
            seed=seed,
            guidance=3.0,
            output_format="png",
        )
        for colour, seed in [("red", 11), ("blue", 12), ("yellow", 13)]
    ]
    ids = [server.submit("flux-dev", **body) for body in same]
    other_size = server.submit("flux-dev", prompt="a red square", width=768, height=512, steps=3, seed=14)
    other_model = server.submit("flux-pro-1.1", prompt="a red square", width=512, height=512, seed=15)
    results = {i: server.result(i) for i in [first, *ids, other_size, other_model]}
    batches: dict[str, list[str]] = {}
    for job_id, body in results.items():
        if "batch" in body["result"]:
            batches.setdefault(body["result"]["batch"]["id"], []).append(job_id)
            assert body["result"]["batch"]["jobs"] >= 2
    assert any(len(members) >= 2 for members in batches.values()), results  # batching happened
    for members in batches.values():
        assert set(members) <= set(ids)  # only the jobs of one model, size and step count
        assert len(members) == results[members[0]]["result"]["batch"]["jobs"]
    assert "batch" not in results[other_size]["result"] and "batch" not in results[other_model]["result"]
    assert server.image(results[other_size]).size == (768, 512)
    # Each batched job got its own seed's image: its lone run, up to rounding (the embedded
    # model's 64x64-area image, enlarged to 512x512, carries the rounding along).
    alone = [
        pixels(
            server.engine.generate(
                EngineRequest(
                    "default", str(b["prompt"]), 512, 512, seed=int(b["seed"]), steps=3, guidance=3.0
                )
            )[0]
        )
        for b in same
    ]
    for i, job_id in enumerate(ids):
        got = pixels(server.image(results[job_id]))
        own = np.abs(got - alone[i]).mean()
        others = [np.abs(got - a).mean() for j, a in enumerate(alone) if j != i]
        print(f"job {i}: {own:.3f} from its lone run, {min(others):.1f} from the nearest other")
        assert own < 2.0 and own < min(others) / 5


def test_the_next_job_starts_before_the_last_ones_results_are_stored_and_its_prompt_is_ready(
    serve: Any,
) -> None:
    server = serve()
    server.submit(
        "flux-dev", prompt="a yellow star", width=256, height=256, steps=50, seed=0
    )  # holds the engine
    first = server.submit("flux-dev", prompt="a green circle", width=256, height=256, steps=50, seed=1)
    second = server.submit(
        "flux-dev",
        prompt="a purple triangle",
        width=256,
        height=256,
        steps=3,
        seed=2,
        guidance=3.0,
        output_format="png",
    )
    one, two = server.result(first), server.result(second)
    # The engine took the second job before the first one's image was moderated, encoded and stored.
    assert two["result"]["start_time"] < one["result"]["end_time"]
    # Its prompt was encoded while the first job denoised, and the run found it ready.
    cache = server.engine.prompt_cache
    # Each text needed (three prompts, and the empty one of a true-CFG checkpoint) was encoded
    # once, either ahead of its job or by it, never both; and at least one ahead.
    loaded = server.engine.loaded(server.checkpoint)
    assert loaded is not None
    texts = 3 + loaded.true_cfg
    assert cache.prepared >= 1 and cache.misses + cache.prepared == texts, (cache.misses, cache.prepared)
    alone = DiffusersFluxEngine(lambda _: server.engine._resolve("x"), "cpu", "float32").generate(  # noqa: SLF001
        EngineRequest("default", "a purple triangle", 256, 256, seed=2, steps=3, guidance=3.0)
    )
    assert np.array_equal(pixels(server.image(two)), pixels(alone[0]))  # the same image as without


def test_a_batch_takes_a_dispatched_job_only_with_its_waiting_task(postgres_server: Any) -> None:
    """PostgreSQL: a job joins another worker's batch only while its procrastinate task still
    waits, and that task is cancelled with the claim, so no worker is handed the job again."""
    from fluxserve.backends.postgres import PostgresDatabase
    from fluxserve.backends.postgres.dispatch import DispatchingJobStore

    url = postgres_server.new_database()
    db = PostgresDatabase(url)
    db.upgrade()
    store = DispatchingJobStore(db, batch_delay_s=0)
    store.create(job(1))
    store.create(job(2))

    def tasks() -> dict[str, str]:
        with db.transaction() as c:
            rows = c.execute("SELECT args->>'job_id' AS job, status::text AS status FROM procrastinate_jobs")
            return {r["job"]: r["status"] for r in rows.fetchall()}

    taken = store.claim_queued("j1", "cpu#0@here:1")
    assert taken is not None and taken.status == JobStatus.RUNNING and taken.attempts == 1
    assert tasks() == {"j1": "cancelled", "j2": "todo"}
    with db.transaction() as c:  # j2's task is being handed to a worker right now
        c.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE args->>'job_id' = 'j2'")
    assert store.claim_queued("j2", "cpu#0@here:1") is None
    left = store.get("j2")
    assert left is not None and left.status == JobStatus.QUEUED and left.attempts == 0  # rolled back
    db.close()
