#!/bin/sh
# The compose layout as plain commands, for machines without containers. Run each block on
# the machine named in its comment; every fluxserve process reads the same settings.
#
#   db.internal     PostgreSQL 13+ (a database "fluxserve" and a user that owns it)
#   s3              any S3-compatible store with a bucket "fluxserve"
#   api1, api2      fluxserve serve --no-worker   (behind a load balancer on :8000)
#   gpu1 ...        fluxserve worker --gpus 0,1   (one engine worker per GPU)
set -eu

# --- on every machine: the shared settings (or put them in a TOML file and pass --config)
export FLUXSERVE_DATABASE_URL="postgresql://fluxserve:${POSTGRES_PASSWORD:?}@db.internal/fluxserve"
export FLUXSERVE_STORAGE_URL="s3://fluxserve/results"
export FLUXSERVE_SECRET_KEY="${FLUXSERVE_SECRET_KEY:?same value on every node}"
export FLUXSERVE_PUBLIC_URL="${FLUXSERVE_PUBLIC_URL:-https://flux.example.internal}"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://s3.internal:9000}"   # plus AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY

role="${1:?usage: run-plain.sh setup | api | worker [--gpus 0,1] [--models id,...]}"
shift
case "$role" in
  setup)   # once, from any machine (and after each upgrade of fluxserve)
    fluxserve db upgrade
    fluxserve keys create --name admin   # prints the key once
    ;;
  api)     # on api1 and api2 (a load balancer sends :8000 to both)
    exec fluxserve serve --no-worker --host 0.0.0.0 --port 8000 "$@"
    ;;
  worker)  # on each GPU machine: e.g. run-plain.sh worker --gpus 0,1
    exec fluxserve worker "$@"
    ;;
  *) echo "unknown role: $role" >&2; exit 2 ;;
esac
