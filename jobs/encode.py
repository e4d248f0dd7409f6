"""spark-submit entry point: `spark-submit jobs/encode.py --input ... --config conf/encode.yaml`; same arguments as `sid-spark encode`."""
import os
import sys

os.environ.setdefault("SID_SPARK_SUBMITTED", "1")

from sid_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["encode", *sys.argv[1:]]))
