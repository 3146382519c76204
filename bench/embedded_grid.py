"""A picture grid of what the embedded model draws, prompts in and out of its grammar, made from
a real server's answers (``fluxserve serve`` on a free loopback port, driven over the BFL API).

    python bench/embedded_grid.py [--out docs/embedded/every_prompt.png] [--seeds 1 2 3]

One row per prompt, one column per seed; under each prompt, what the server said: "as
written", or the caption its approximation drew (the result's ``details.approximation``).
Prints each prompt's note and the server's own timings, and one 1024x1024 generation's
engine and encode seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw, ImageFont

PROMPTS = (
    "a large red circle on a blue background",
    "a small yellow star in the top left and a green square in the bottom right",
    "A futuristic city skyline at sunset, photorealistic",
    "portrait of an old man, oil painting",
    "a red car",
    "a sun over the mountains",
    "abstract art",
)
TILE = 160
LABEL_W = 330


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``fluxserve serve`` as a user starts it: the embedded model, loopback, no key."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
    env |= {"FLUXSERVE_LOG_LEVEL": "warning", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "fluxserve", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not become ready")


def generate(base: str, prompt: str, seed: int, size: int) -> tuple[dict, Image.Image]:  # type: ignore[type-arg]
    """One BFL job, polled until Ready: its get_result answer and its image."""
    r = httpx.post(
        f"{base}/v1/flux-kontext-pro",
        json={"prompt": prompt, "seed": seed, "width": size, "height": size, "output_format": "png"},
    )
    r.raise_for_status()
    while True:
        body = httpx.get(f"{base}/v1/get_result", params={"id": r.json()["id"]}).json()
        if body["status"] != "Pending":
            break
        time.sleep(0.05)
    if body["status"] != "Ready":
        raise SystemExit(f"{prompt!r}: {body}")
    image = Image.open(io.BytesIO(httpx.get(body["result"]["sample"]).content)).convert("RGB")
    return body, image


def label(prompt: str, note: str | None) -> list[tuple[str, str]]:
    """Lines of the row's label: the prompt, then what was drawn for it."""
    drew = re.search(r"so it drew '([^']*)'", note or "")
    said = "as written" if note is None else f"approximation: {drew.group(1) if drew else note}"
    lines = [(line, "black") for line in textwrap.wrap(f'"{prompt}"', 40)]
    colour = "#276749" if note is None else "#9c4221"
    return lines + [(line, colour) for line in textwrap.wrap(said, 44)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/embedded/every_prompt.png"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--size", type=int, default=256, help="the side each image is asked at")
    args = ap.parse_args()
    font = ImageFont.load_default(size=13)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(Path(tmp))
        try:
            rows = []
            for prompt in PROMPTS:
                tiles = []
                note = None
                for seed in args.seeds:
                    body, image = generate(base, prompt, seed, args.size)
                    note = (body.get("details") or {}).get("approximation")
                    tiles.append(image.resize((TILE, TILE), Image.Resampling.LANCZOS))
                    timings = body["result"]["timings"]
                print(f"{prompt!r}: {note or 'as written'} (engine {timings['engine_s']} s)")
                rows.append((prompt, note, tiles))
            body, _ = generate(base, PROMPTS[2], 0, 1024)
            t = body["result"]["timings"]
            print(f"1024x1024: engine {t['engine_s']} s + encode {t['encode_s']} s (server's timings)")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    pad = 8
    sheet = Image.new(
        "RGB", (LABEL_W + len(args.seeds) * (TILE + pad) + pad, len(rows) * (TILE + pad) + pad + 20), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for j, seed in enumerate(args.seeds):
        draw.text((LABEL_W + j * (TILE + pad), 4), f"seed {seed}", fill="black", font=font)
    for i, (prompt, note, tiles) in enumerate(rows):
        y = 20 + pad + i * (TILE + pad)
        for k, (line, colour) in enumerate(label(prompt, note)):
            draw.text((pad, y + 4 + 17 * k), line, fill=colour, font=font)
        for j, tile in enumerate(tiles):
            sheet.paste(tile, (LABEL_W + j * (TILE + pad), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
