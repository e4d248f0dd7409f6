"""spark-submit entry point: `spark-submit jobs/evaluate.py --sids S --embeddings E --output DIR`; same arguments as `sid-spark evaluate`."""
import os
import sys

os.environ.setdefault("SID_SPARK_SUBMITTED", "1")

from sid_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
