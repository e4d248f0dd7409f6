"""Quality metrics of SID tables: pure formulas (formulas.py), a blocked neighbour kernel (neighbours.py) and the
Spark aggregations that feed them (spark_metrics.py)."""
from .formulas import entropy_bits, gini, gini_from_histogram, level_metrics, sid_metrics
from .spark_metrics import Evaluation, evaluate, evaluate_full

__all__ = ["evaluate", "evaluate_full", "Evaluation", "entropy_bits", "gini", "gini_from_histogram",
           "level_metrics", "sid_metrics"]
