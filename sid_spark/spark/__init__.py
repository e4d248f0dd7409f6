"""Layer 2: distributed execution. The one place that knows DataFrames, partitions, broadcast and Arrow batches."""
