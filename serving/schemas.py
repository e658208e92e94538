"""Request and response bodies of the scoring API (msgspec), and their OpenAPI description.

Requests are decoded STRICTLY by msgspec (`decoder_for`): a time must be an ISO-8601 string with a
zone (a number such as 12345 is refused), an id has no NUL byte. The OpenAPI request schemas are
msgspec's own JSON schema of these same structs, so what is documented is what is decoded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

NO_NUL = r"^[^\x00]*$"  # ids and trunks become store keys; NUL is the store's separator
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_NUL)]
Number = Annotated[str, msgspec.Meta(max_length=128, pattern=NO_NUL)]
Trunk = Annotated[str, msgspec.Meta(max_length=256, pattern=NO_NUL)]
# The year as written must be 1970-2099 (checked in admission.check_time: msgspec has no date bounds).
YEARS = (1970, 2099)
AwareTime = Annotated[datetime, msgspec.Meta(tz=True, extra_json_schema={
    "pattern": r"^(19[7-9][0-9]|20[0-9][0-9])-",
    "description": f"RFC 3339 date-time with a zone (Z or +hh:mm); the year as written is {YEARS[0]}-{YEARS[1]}"})]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e7)]


class CallSetup(msgspec.Struct):
    """What a switch or SBC knows at INVITE time; numbers in the operator's own format."""

    operator: Text
    call_id: Text
    start_time: AwareTime
    b_number: Number
    a_number: Number | None = None  # absent or a withheld word ("anonymous") = withheld caller ID
    ingress_trunk: Trunk | None = None


class BatchRequest(msgspec.Struct):
    calls: Annotated[list[CallSetup], msgspec.Meta(min_length=1)]


class CallEnd(msgspec.Struct):
    """A call's end as the switch reports it; the history uses ended calls' outcomes.

    Send ring_s (setup to answer, or to release when unanswered), or start_time so the service
    derives it the way the batch mapping does; without either the call never counts as short.
    """

    operator: Text
    call_id: Text
    end_time: AwareTime
    answered: bool
    start_time: AwareTime | None = None
    disposition: Literal["answered", "no_answer", "busy", "cancelled", "failed"] | None = None
    answer_time: AwareTime | None = None
    ring_s: Seconds | None = None
    duration_s: Seconds | None = None
    sip_code: Annotated[int, msgspec.Meta(ge=100, le=699)] | None = None
    q850_cause: Annotated[int, msgspec.Meta(ge=0, le=127)] | None = None
    release_side: Literal["caller", "callee", "network", "unknown"] | None = None


class Reason(msgspec.Struct):
    feature: str
    value: float
    contribution: float  # to the log-odds; positive pushes towards fraud


class ScoreResult(msgspec.Struct):
    call_id: str
    operator: str
    probability: float
    decision: Literal["allow", "flag", "block"]
    model_version: str
    reasons: list[Reason]  # top contributions; for flag/block only unless ?explain=true
    features: dict[str, float] | None = None  # only with ?include_features=true


class BatchResult(msgspec.Struct):
    model_version: str
    results: list[ScoreResult]


class EndAck(msgspec.Struct):
    operator: str
    call_id: str
    observed: bool  # False: no start of this call is in the history (never scored, already ended, or too old)


class FieldError(msgspec.Struct):
    field: str
    message: str


class ErrorBody(msgspec.Struct):
    """Every 4xx/5xx body: `field` names the first offending field (400/413/422), `errors` all of them."""

    status_code: int
    detail: str
    field: str | None = None
    errors: list[FieldError] = []


class RefusalInfo(msgspec.Struct):
    bundle_path: str
    version: str | None
    reason: str
    at: datetime


class StoreInfo(msgspec.Struct):
    kind: Literal["memory", "redis"]
    url: str | None  # redis://host:port/db (no password)
    seeded_from: str | None  # the bundle version whose state seeded the (then empty) store
    seeded_at: str | None


class ModelInfo(msgspec.Struct):
    version: str
    bundle_path: str
    trained_on: Any
    metrics: Any
    thresholds: dict[str, float]
    feature_count: int
    loaded_at: datetime
    swaps: int
    last_refused: RefusalInfo | None
    newest_promoted_refused: RefusalInfo | None  # set while the served bundle is not the newest promoted one
    store: StoreInfo


class Health(msgspec.Struct):
    status: str
    model_version: str | None = None


HOT_BODIES = {"/v1/score": CallSetup, "/v1/score/batch": BatchRequest, "/v1/calls/end": CallEnd}


def decoder_for(path: str) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(HOT_BODIES[path])  # strict by default: no int -> datetime, no "1" -> bool


def openapi_schemas(operators: list[str]) -> dict[str, dict]:
    """JSON schemas (OpenAPI 3.1 components) of the request/response bodies, with the configured
    operators enumerated."""
    _, components = msgspec.json.schema_components(
        [*HOT_BODIES.values(), ScoreResult, BatchResult, EndAck, ErrorBody, ModelInfo, Health],
        ref_template="#/components/schemas/{name}")
    for name in ("CallSetup", "CallEnd"):
        components[name]["properties"]["operator"] = {"type": "string", "enum": sorted(operators)}
    return components
