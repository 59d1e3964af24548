"""Errors a run can end with; each message is the one line the CLI prints."""


class FusionError(Exception):
    """Base of every expected failure of a run (bad data, bad config)."""

    stage: str = "run"
    # Bad data or config fails the same way every time; only a few failures are worth a retry.
    retryable: bool = False
    # Set where a failing batch was kept, so the summary can point at it.
    batch_id: str | None = None
    quarantine_uri: str | None = None


class ConfigError(FusionError):
    """The configuration cannot be used (a missing or malformed suite file)."""

    stage = "config"


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


class TypeMismatch(SchemaError):
    """Values of a column that are not of its declared type; names the column and the first rows.
    The message is `column <column>: <reason>`; callers that name the field their own way use `reason`."""

    def __init__(self, column: str, declared: str, rows: list[int], reason: str) -> None:
        super().__init__(f"column {column}: {reason}")
        self.column = column
        self.declared = declared
        self.rows = rows
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:  # crosses process boundaries (Dask, Prefect results)
        return (type(self), (self.column, self.declared, self.rows, self.reason), self.__dict__)


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


class RunFailed(FusionError):
    """A run that ended on bad data or config; carries the summary so far as JSON."""

    def __init__(self, message: str, summary_json: str = "{}") -> None:
        super().__init__(message, summary_json)
        self.message = message
        self.summary_json = summary_json

    def __str__(self) -> str:
        return self.message
