"""sid_spark: Semantic IDs for item catalogs, on Spark."""
from .config import TokenizerConfig
from .tokenizer import ResidualKMeansModel, ResidualKMeansTokenizer

__all__ = ["TokenizerConfig", "ResidualKMeansTokenizer", "ResidualKMeansModel"]
__version__ = "0.1.0"
