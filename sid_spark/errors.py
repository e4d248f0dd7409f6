"""Errors a job turns into a one-line message and a non-zero exit code."""


class SidSparkError(Exception):
    """Base class: the message is meant for an operator, on one line."""


class InputError(SidSparkError):
    """The input cannot be encoded at all (missing column, wrong type, empty, mixed dimensions, N < K)."""


class ArtifactError(SidSparkError):
    """A model artifact is missing, incomplete, corrupted or does not match the data."""
