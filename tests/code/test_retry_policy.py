from __future__ import annotations

from prefect.states import Failed

from fusion.core.errors import SchemaError, SourceReadError, SourceUnavailable, ValidationFailed
from tasks.pipeline_tasks import retry_unless_bad_data


def test_io_failures_are_retried() -> None:
    assert retry_unless_bad_data(None, None, Failed(data=OSError("connection reset")))
    assert retry_unless_bad_data(None, None, Failed(data=TimeoutError()))
    assert retry_unless_bad_data(None, None, Failed(data=SourceUnavailable("cannot read source s3://b/x")))


def test_bad_data_is_never_retried() -> None:
    for error in (SchemaError("t.x: wrong type"), ValidationFailed("suite failed"), SourceReadError("truncated")):
        assert not retry_unless_bad_data(None, None, Failed(data=error))
