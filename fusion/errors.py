"""Errors a run can end with; each message is the one line the CLI prints."""


class FusionError(Exception):
    """Base of every expected failure of a run (bad data, bad config)."""

    stage: str = "run"
    # Bad data or config fails the same way every time; only a few failures are worth a retry.
    retryable: bool = False
    # Set where a failing batch was kept, so the summary can point at it.
    batch_id: str | None = None
    quarantine_uri: str | None = None


class SourceReadError(FusionError):
    """A source file could not be parsed (truncated, corrupt, not the declared format)."""

    stage = "ingest"


class SourceUnavailable(FusionError):
    """A source could not be reached or read (missing file, network, permissions): worth a retry."""

    stage = "ingest"
    retryable = True


class SchemaError(FusionError):
    """A table lacks a configured column or a column has the wrong type."""

    stage = "ingest"


class ValidationFailed(FusionError):
    """The Great Expectations suite failed; the batch is in quarantine."""

    stage = "validate"

    def __init__(self, message: str, quarantine_uri: str | None = None) -> None:
        super().__init__(message)
        self.quarantine_uri = quarantine_uri


class FeatureError(FusionError):
    """The feature spec does not fit the data (unknown column, bad expression)."""

    stage = "features"


class TrainingError(FusionError):
    """Training cannot proceed (an empty split, a single class)."""

    stage = "train"
