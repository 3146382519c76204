"""S3 storage through the live server: results land in a real S3-compatible store (nanio on
loopback), download through our signed URLs or the store's presigned ones, and are swept."""

from __future__ import annotations

import io
import time

import httpx
from PIL import Image

from conftest import S3Server, poll_result


def start(make_server, s3: S3Server, prefix: str, **settings: str):  # type: ignore[no-untyped-def]
    srv = make_server(start=False, storage_url=f"s3://{s3.bucket}/{prefix}", **settings)
    srv.env.update(s3.env)
    srv.start()
    return srv


def objects(s3: S3Server, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix + "/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_results_live_in_s3_and_stream_through_signed_urls(make_server, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    srv = start(make_server, s3_server, "run-signed")
    r = httpx.post(
        f"{srv.base_url}/v1/flux-pro-1.1",
        json={"prompt": "a red circle", "seed": 3, "width": 256, "height": 256},
    )
    result = poll_result(srv.base_url, r.json()["id"])
    sample = result["result"]["sample"]
    assert sample.startswith(srv.base_url + "/v1/files/results/")
    body = httpx.get(sample)
    assert body.status_code == 200 and Image.open(io.BytesIO(body.content)).size == (256, 256)
    key = f"run-signed/results/{r.json()['id']}/0.jpeg"
    assert objects(s3_server, "run-signed") == [key]
    stored = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    assert stored == body.content
    assert httpx.get(sample.replace("sig=", "sig=0")).status_code == 403


def test_presigned_urls_and_the_retention_sweep(make_server, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    srv = start(
        make_server, s3_server, "run-presigned", storage_presign="1", retention_s="3", sweep_interval_s="0.5"
    )
    r = httpx.post(f"{srv.base_url}/v1/flux-kontext-pro", json={"prompt": "a blue star", "seed": 4})
    job_id = r.json()["id"]
    sample = poll_result(srv.base_url, job_id)["result"]["sample"]
    assert sample.startswith(s3_server.endpoint + f"/{s3_server.bucket}/run-presigned/results/{job_id}/")
    assert "X-Amz-Signature=" in sample and "X-Amz-Expires=600" in sample
    got = httpx.get(sample)
    assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    deadline = time.monotonic() + 30
    while objects(s3_server, "run-presigned") and time.monotonic() < deadline:
        time.sleep(0.25)
    assert objects(s3_server, "run-presigned") == []
    assert (
        httpx.get(f"{srv.base_url}/v1/get_result", params={"id": job_id}).json()["status"] == "Task not found"
    )
