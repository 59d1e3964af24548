"""What `fusion trigger` accepts as a run request, and the reason it gives for what it refuses."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from fusion.trigger import InvalidRequest, deadletter_record, parse_request

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def request(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": "req-1",
        "source": "/upstream/loader",
        "type": "fusion.ingest.requested",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "data": {"dataset": "flights", "uri": "s3://lake/flights/2014-01.parquet", "params": {}},
    }
    body.update(changes)
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_valid_request() -> None:
    event = parse_request(encode(request()), CONFIGS)
    assert event.id == "req-1" and event.data.dataset == "flights" and event.data.uri.endswith(".parquet")


def test_params_are_checked_against_the_settings_tree() -> None:
    ok = parse_request(
        encode(request(data={"dataset": "flights", "params": {"dataset": {"gate": {"min_delta": 0.01}}}})), CONFIGS
    )
    assert ok.data.params["dataset"]["gate"]["min_delta"] == 0.01
    with pytest.raises(InvalidRequest, match=r"data\.params: dataset\.gate\.min_delta"):
        parse_request(
            encode(request(data={"dataset": "flights", "params": {"dataset": {"gate": {"min_delta": -1}}}})), CONFIGS
        )


def test_params_that_break_the_config_are_refused_by_its_check() -> None:
    """A request whose params name a column no table has is dead-lettered, not started and failed."""
    params = {"dataset": {"features": {"numeric": ["distance", "distnace"]}}}
    with pytest.raises(InvalidRequest) as refused:
        parse_request(encode(request(data={"dataset": "flights", "params": params})), CONFIGS)
    assert str(refused.value) == (
        "data.params: dataset.features.numeric[1]: unknown column 'distnace' of table 'flights';"
        " did you mean 'distance'?"
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "a CloudEvent is a JSON object, got list"),
        (encode(request(type="fusion.data.ready")), "type: Input should be 'fusion.ingest.requested'"),
        (encode({k: v for k, v in request().items() if k != "id"}), "id: Field required"),
        (encode({k: v for k, v in request().items() if k != "specversion"}), "specversion: Field required"),
        (encode(request(data={"uri": "x"})), "data.dataset: Field required"),
        (encode(request(data={"dataset": "Flights!"})), "data.dataset: String should match pattern"),
        (encode(request(data={"dataset": "nosuch"})), "data.dataset: no config nosuch.yaml"),
        (encode(request(data={"dataset": "flights", "extra": 1})), "data.extra: Extra inputs are not permitted"),
        (encode(request(traceparent="zz")), "traceparent: Value error, traceparent must be W3C"),
        (encode(request(data={"dataset": "flights", "filler": "x" * 300_000})), "exceeds the limit of 262144"),
    ],
)
def test_invalid_requests_name_the_field_and_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_request(payload, CONFIGS)
    assert reason in str(refused.value)


def test_deadletter_keeps_the_original_bytes_and_the_reason() -> None:
    original = b"\x00binary\xff"
    record = json.loads(deadletter_record(original, "not JSON", "fusion.ingest.requests", 2, 41))
    assert base64.b64decode(record["original_base64"]) == original
    assert record["reason"] == "not JSON" and record["source"] == {
        "topic": "fusion.ingest.requests",
        "partition": 2,
        "offset": 41,
    }
