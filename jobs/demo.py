"""spark-submit entry point: `spark-submit jobs/demo.py --input ... --config conf/demo.yaml`; same arguments as `sid-spark demo`."""
import os
import sys

os.environ.setdefault("SID_SPARK_SUBMITTED", "1")

from sid_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
