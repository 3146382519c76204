"""Property-based test of the OpenAPI document: whatever schemathesis sends, no route answers 5xx.

Schemathesis reads the server's own ``/openapi.json`` and sends requests to every operation it
lists, against a real server on loopback: once on an open loopback server (no key) and once on
a server with a key, sent as ``x-key`` and ``Authorization: Bearer``. The run is small and
derandomized, so it is reproducible and quick (10 examples an operation; 50 in the run marked
``slow``); the hand-written cases in ``test_validation.py``
pin the inputs that were reported.

It drives schemathesis's engine (what its CLI runs) rather than its pytest plugin, which does
not support the pytest this project uses (it reads ``Node._nodeid``, gone in pytest 9).

What is left out, and why:

- A BFL model route whose body model an earlier route already has (``flux-kontext-max``,
  ``flux-pro``, ``flux-dev``, ``flux-2-max``, ``flux-2-klein-9b`` and their ``-finetuned``
  twins ...): the same handler and body model (only the catalog entry differs), so it would
  repeat the same requests. The routes to leave out are read from the document itself.
- Positive (schema-valid) data in the coverage phase: it sends every boundary value that is
  *valid* (``n=10``, ``steps=50``, 2048x2048 ...), i.e. hundreds of real generations. Valid data
  still comes from the fuzzing phase; the coverage phase sends the invalid boundaries.
- Cost, not validity: where a request's ``n``, ``steps`` or ``output_compression`` is within its
  bounds, it is replaced by the cheapest valid value before sending (one image, one step, no
  slow PNG compression). Out-of-range values are sent as generated.
- The server's queue is bounded at two jobs, so most accepted BFL submissions answer 429.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import events

from conftest import Server, run_cli

EXAMPLES = [10, pytest.param(50, marks=pytest.mark.slow, id="50")]
"""Examples per operation in the fuzzing phase: a short run by default, a long one marked slow."""
SERVER_SETTINGS = {"max_queued_jobs": "2"}
CHEAPEST = {"n": (1, 10, 1), "steps": (1, 50, 1), "output_compression": (0, 100, 100)}
"""name: (lowest valid, highest valid, the value sent instead of a valid one)."""


def _cheap(context: Any, case: Any) -> Any:
    """Replace valid but costly values (see the module docstring); others are sent as they are."""
    body = case.body
    if isinstance(body, dict):
        for name, (lo, hi, cheapest) in CHEAPEST.items():
            value = body.get(name)
            if isinstance(value, int | float) and lo <= value <= hi:
                body[name] = cheapest
    return case


def duplicate_routes(document: dict[str, Any]) -> list[str]:
    """The BFL model routes whose request body model an earlier route already has."""
    seen: set[str] = set()
    duplicates = []
    for path, operations in document["paths"].items():
        body = operations.get("post", {}).get("requestBody", {}).get("content", {})
        ref = body.get("application/json", {}).get("schema", {}).get("$ref")
        if path.startswith("/v1/flux") and ref:
            if ref in seen:
                duplicates.append(path)
            seen.add(ref)
    return duplicates


def _schema(server: Server, headers: dict[str, str], max_examples: int) -> Any:
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json", timeout=30)
    duplicates = duplicate_routes(httpx.get(server.base_url + "/openapi.json").json())
    assert {"/v1/flux-dev", "/v1/flux-2-max", "/v1/flux-dev-finetuned"} <= set(duplicates)
    assert "/v1/flux-pro-1.1" not in duplicates and "/v1/flux-2-flex" not in duplicates
    schema = schema.exclude(path=duplicates)
    schema.config.update(base_url=server.base_url, headers=headers or None, request_timeout=60)
    schema.config.generation.update(max_examples=max_examples, deterministic=True, database="none")
    schema.config.checks.update(included_check_names=["not_a_server_error"])
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    schema.config.phases.coverage.generation.update(modes=[schemathesis.GenerationMode.NEGATIVE])
    schema.hook("map_case")(_cheap)
    return schema


def _run(schema: Any) -> None:
    """Run every phase; fail on any 5xx, dropped connection or engine error, with the requests."""
    problems: list[str] = []
    answered: dict[str, int] = {}
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            for interaction in event.recorder.interactions.values():
                request, response = interaction.request, interaction.response
                label = event.recorder.label
                answered[label] = answered.get(label, 0) + 1
                if response is not None:
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response is None or response.status_code >= 500:
                    status = response.status_code if response is not None else "no response"
                    body = (request.body or b"")[:500]
                    text = response.content[:300] if response is not None else b""
                    problems.append(f"{status} {request.method} {request.uri} body={body!r} -> {text!r}")
        elif isinstance(event, events.NonFatalError):
            problems.append(f"error in {event.label}: {event.value!r}"[:1000])
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}"[:1000])
    elapsed = time.monotonic() - started
    print(f"schemathesis: {sum(answered.values())} requests in {elapsed:.0f}s: {answered} {statuses}")
    assert not problems, "\n".join(problems[:20])
    # Every operation was exercised, past authentication, and some requests succeeded.
    assert len(answered) >= 14 and min(answered.values()) >= 1, answered
    assert 401 not in statuses and statuses.get(200, 0) >= 20, statuses


def _create_key(server: Server) -> str:
    done = run_cli(
        server.env, "keys", "create", "--scope", "generate,read,admin", "--data-dir", str(server.data_dir)
    )
    done.check_returncode()
    return done.stdout.strip()


@pytest.mark.parametrize("max_examples", EXAMPLES)
def test_no_route_answers_5xx_without_a_key(make_server, max_examples: int) -> None:  # type: ignore[no-untyped-def]
    server = make_server(**SERVER_SETTINGS)
    # Creating a key (admin API) turns the open server into a keyed one, by design: the keyed
    # run covers that route.
    _run(_schema(server, {}, max_examples).exclude(path="/v1/admin/keys", method="POST"))


@pytest.mark.parametrize("max_examples", EXAMPLES)
def test_no_route_answers_5xx_with_a_key(make_server, max_examples: int) -> None:  # type: ignore[no-untyped-def]
    server = make_server(start=False, **SERVER_SETTINGS)
    key = _create_key(server)
    server.start()
    _run(_schema(server, {"x-key": key, "Authorization": f"Bearer {key}"}, max_examples))
