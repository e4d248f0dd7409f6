"""spark-submit entry point: `spark-submit jobs/generation.py --root ... --generation g --begin|--publish`; same arguments as `sid-spark generation`."""
import os
import sys

os.environ.setdefault("SID_SPARK_SUBMITTED", "1")

from sid_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generation", *sys.argv[1:]]))
