import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def spark():
    from sid_spark.spark.session import get_session

    s = get_session("local[2]", app_name="sid_spark-tests",
                    conf={"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2",
                          "spark.driver.memory": "3g"})
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is absent (a checkout without the team's shared datasets)")
    return path


@pytest.fixture(scope="session")
def blobs():
    """Clustered data: 8 well separated blobs in 6-d, 400 points each."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 6)) * 5
    x = np.concatenate([c + 0.3 * rng.standard_normal((400, 6)) for c in centers]).astype(np.float32)
    return x


def make_df(spark, x: np.ndarray, partitions: int = 2, ids=None, id_col="item_id", vector_col="embedding"):
    import pandas as pd

    ids = np.arange(len(x)) if ids is None else ids
    pdf = pd.DataFrame({id_col: ids, vector_col: list(x.astype(np.float32))})
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(id_col, T.LongType()),
                           T.StructField(vector_col, T.ArrayType(T.FloatType()))])
    return spark.createDataFrame(pdf, schema).repartition(partitions)
