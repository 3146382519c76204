#!/usr/bin/env bash
# Wheels the lent GPU machine lacks for the embedded model's trainer (training.embedded.gpu_train),
# downloaded here into .whl-embedded/ (ignored by git) so that a device `run` can carry them. Its own
# folder, not the shared .whl/: what a call carries counts towards its 64 MiB, and this training
# needs one wheel of 6 MB.
#
#   bash training/embedded/gpu_wheels.sh        # from the repository root, with the venv active
#
# The device image has torch, transformers, tokenizers, safetensors, huggingface-hub, numpy and
# pillow (/work/.library/device/KINDS.md) but not diffusers: this fetches the diffusers release
# installed here, so the checkpoint is written by the same code that loads it. gpu_session.sh
# installs it on the device.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl-embedded/' "$exclude" 2>/dev/null || echo '/.whl-embedded/' >> "$exclude"
version=$(python3 -c 'import diffusers; print(diffusers.__version__)')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl-embedded "diffusers==${version}"
ls -l .whl-embedded/
