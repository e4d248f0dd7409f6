"""spark-submit entry point: `spark-submit jobs/retrieval.py --sids S --interactions Q [--embeddings E] --output DIR`;
same arguments as `sid-spark retrieval`."""
import os
import sys

os.environ.setdefault("SID_SPARK_SUBMITTED", "1")

from sid_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["retrieval", *sys.argv[1:]]))
