#!/usr/bin/env bash
# Spark GPU discovery script (spark.{executor,driver}.resource.gpu.discoveryScript): prints the GPUs this
# executor may use as {"name": "gpu", "addresses": ["0", "1"]}. Spark hands each task a subset of these
# addresses (TaskContext.resources()["gpu"].addresses); none found -> an empty list, and Spark refuses to start
# an executor that asked for a GPU it cannot get.
set -u
addresses=""
if command -v nvidia-smi >/dev/null 2>&1; then
  addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null \
    | tr -d ' \r' | grep -E '^[0-9]+$' | sed 's/.*/"&"/' | paste -sd, -)
fi
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
