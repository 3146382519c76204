#!/usr/bin/env bash
# One call of the embedded model's GPU session plan (EMBEDDED_MODEL_RESULTS.md, "GPU session plan"),
# run on the lent machine from the repository root:
#
#   bash training/embedded/gpu_session.sh 1   # call 1: autoencoder (+ its round-trip score), text
#   bash training/embedded/gpu_session.sh 2   # call 2: transformer, 8.0 min
#   bash training/embedded/gpu_session.sh 3   # call 3: transformer's last 7.5 min, export
#
# Installs the carried diffusers wheel (.whl-embedded/, from gpu_wheels.sh) once per machine,
# trains with the plan's flags (flags after the call number come last, so they override), writes
# the state, the log (log<call>.txt) and at the end checkpoint.tar to $OUT, and keeps a copy of
# the state in /tmp/fs (KEEP) for the next call on the same warm machine. It resumes from there
# and, if carried, from runs/gpu.
# FRESH=1 starts from nothing, ignoring KEEP and runs/gpu.
# DEVICE=cpu runs the same on a CPU (with toy flags: a smoke test of the script, not training).
set -uo pipefail
call=${1:?usage: gpu_session.sh 1|2|3 [gpu_train flags]}
shift
out=${OUT:?OUT must name the directory that comes back}
stop=8.0
until=()
[ "$call" = 1 ] && until=(--until transformer)  # look at the round trip before the transformer
site=${SITE:-/tmp/fluxserve-site}
keep=${KEEP:-/tmp/fs}
if ! python3 -c 'import diffusers' 2>/dev/null && [ ! -d "$site/diffusers" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .whl-embedded/diffusers-*.whl || exit 1
fi
export PYTHONPATH="$site:.:src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi -L
resume=(--resume "$keep")
[ -f runs/gpu/state.json ] && resume+=(--resume runs/gpu)
[ -n "${FRESH:-}" ] && resume=()  # FRESH=1: start from nothing (e.g. a second autoencoder)
workers=$(( $(nproc) - 2 ))
python3 -m training.embedded.gpu_train --device "${DEVICE:-cuda}" --workers "$workers" \
    --vae-blocks 24,48,96 --vae-layers 2 --vae-batch 256 --vae-edge-weight 4 \
    --batch 1024 --edit-batch 512 --reuse 2 --lr 1e-3 --warmup 300 --ema 0.9995 --wild-captions 0.1 \
    --vae-steps 1000000 --text-steps 1000000 --steps 1000000 \
    --vae-minutes 4 --text-minutes 0.75 --transformer-minutes 15.5 --save-every 2 \
    --out "$out" "${resume[@]}" --stop-after "$stop" "${until[@]}" "$@" 2>&1 | tee "$out/log$call.txt"
rc=${PIPESTATUS[0]}
if [ -f "$out/state.json" ]; then
    rm -rf "$keep" && mkdir -p "$keep" && cp "$out"/state.* "$keep"/
fi
exit "$rc"
