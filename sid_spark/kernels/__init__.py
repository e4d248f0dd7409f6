"""Layer 1: pure numerical kernels (numpy / torch). No Spark imports here."""
