#!/usr/bin/env bash
# Container entry point. Kubernetes driver/executor pods (spark-submit --master k8s://...) call the Spark
# image's own entry point with `driver` / `executor`; anything else is one sid_spark step run with spark-submit
# in local mode inside the container:  <step> [args]  ->  spark-submit jobs/<step>.py --config conf/<step>.yaml [args]
set -euo pipefail
case "${1:-}" in
  driver|driver-py|executor|init)
    exec /opt/entrypoint.sh "$@" ;;
  "")
    echo "usage: <train|encode|dedup|evaluate|demo> [args]" >&2; exit 2 ;;
esac
step="$1"; shift
job="${SID_SPARK_HOME:-/opt/sid_spark}/jobs/${step}.py"
[ -f "$job" ] || { echo "unknown step '${step}': no ${job}" >&2; exit 2; }
config=()
conf_file="${SID_SPARK_HOME:-/opt/sid_spark}/conf/${step}.yaml"
[ -f "$conf_file" ] && config=(--config "$conf_file")
exec "${SPARK_HOME:-/opt/spark}/bin/spark-submit" \
  --properties-file "${SID_SPARK_PROFILE:-${SID_SPARK_HOME:-/opt/sid_spark}/conf/spark/local.conf}" \
  "$job" "${config[@]}" "$@"
