#!/usr/bin/env bash
# Steps run on the lent GPU host (no package index there), from the repository root:
#   bash bench/gpu/device.sh build DIR   install DIR/wheels into /tmp/site, then build the CUDA
#                                        llama-server with `rag runtime build` from the bundle in
#                                        DIR (RAG_OFFLINE_DIR); its status and log go to $OUT
#   bash bench/gpu/device.sh join PART...  append model parts NAME.partNN to /tmp/models/NAME
# Everything lands under /tmp (kept while the machine stays warm).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export RAG_CACHE_DIR=/tmp/ragcache RAG_DATA_DIR=/tmp/ragdata
step=$1; shift
case "$step" in
build)
    bundle=$(realpath "$1")
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$bundle"/wheels/*.whl || exit 1
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
    started=$(date +%s)
    RAG_OFFLINE_DIR=$bundle python3 -m rag runtime build >/tmp/build.out 2>&1
    echo "rag runtime build: exit $? after $(( $(date +%s) - started )) s"
    tail -c 1500 /tmp/build.out
    find /tmp/ragcache -name build.log -exec cp {} "$OUT"/ \;
    python3 -m rag runtime status --json | tee "$OUT"/runtime-status.json
    ;;
join)
    mkdir -p /tmp/models
    for part in "$@"; do
        name=$(basename "$part"); name=${name%.part*}
        cat "$part" >>/tmp/models/"$name"
    done
    ls -la /tmp/models
    ;;
esac
