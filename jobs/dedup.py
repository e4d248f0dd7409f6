"""spark-submit entry point: `spark-submit jobs/dedup.py --input CATALOG --sids SIDS --model M --output OUT --set dedup=reassign`; same arguments as `sid-spark dedup`."""
import os
import sys

os.environ.setdefault("SID_SPARK_SUBMITTED", "1")

from sid_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["dedup", *sys.argv[1:]]))
