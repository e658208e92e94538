"""Request and response bodies of the scoring API (msgspec), and their OpenAPI description.

Requests are decoded STRICTLY by msgspec (`RequestTypes`): a time must be an RFC 3339 string with a
zone (a number such as 12345 is refused), an id has no NUL byte, an operator is a configured one and
its numbers follow its numbering plan. The OpenAPI request schemas are msgspec's own JSON schema of
these same structs, so what is documented is exactly what is accepted (schemathesis checks both ways).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

import msgspec

NO_NUL = r"^[^\x00]*$"  # ids and trunks become store keys; NUL is the store's separator
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_NUL)]
Trunk = Annotated[str, msgspec.Meta(max_length=256, pattern=NO_NUL)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e7)]

# RFC 3339 date-time with a zone, real calendar dates only, the year as written 1970-2099 (0001 or 9999
# would overflow converting to UTC and are never a call's time). The pattern IS the rule: a time is
# decoded as a string matching it, then parsed (admission.parse_time).
_YEAR = r"(?:19[7-9][0-9]|20[0-9][0-9])"
_LEAP = r"(?:19(?:7[26]|8[048]|9[26])|20(?:[02468][048]|[13579][26]))"
_DATE = (rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
         rf"|02-(?:0[1-9]|1[0-9]|2[0-8]))|{_LEAP}-02-29)")
TIME_PATTERN = (rf"^{_DATE}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{{1,6}})?"
                r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$")
TIME_RULE = "an RFC 3339 date-time with a zone (Z or +hh:mm), a real date, year 1970-2099"
AwareTime = Annotated[str, msgspec.Meta(pattern=TIME_PATTERN, description=TIME_RULE)]


def _requests(operators: dict[str, str], a_patterns: dict[str, str], b_patterns: dict[str, str]):
    """The request structs for the configured operators: a call is tagged by its operator, and its
    numbers follow that operator's numbering plan (numbers.number_patterns), so the schema and the
    decoder accept exactly the same bodies."""

    CallSetupBase = msgspec.defstruct("CallSetupBase", [], tag_field="operator")

    setups = []
    for op in sorted(operators):
        a = Annotated[str, msgspec.Meta(max_length=128, pattern=a_patterns[op])]
        b = Annotated[str, msgspec.Meta(max_length=128, pattern=b_patterns[op])]
        setups.append(msgspec.defstruct(
            f"CallSetup_{op}", [("call_id", Text), ("start_time", AwareTime), ("b_number", b),
                                ("a_number", a | None, None),  # absent, empty or a withheld word: withheld caller ID
                                ("ingress_trunk", Trunk | None, None)],
            bases=(CallSetupBase,), tag=op, namespace={"operator": op, "__doc__": f"A call of {op}: {operators[op]}"}))
    CallSetup = setups[0] if len(setups) == 1 else Union[tuple(setups)]  # noqa: UP007 (a runtime union of classes)

    BatchRequest = msgspec.defstruct("BatchRequest", [("calls", Annotated[list[CallSetup], msgspec.Meta(min_length=1)])])
    Operator = Literal[tuple(sorted(operators))]  # type: ignore[valid-type]
    end_doc = """A call's end as the switch reports it; the history uses ended calls' outcomes.

    Send ring_s (setup to answer, or to release when unanswered), or start_time so the service
    derives it the way the batch mapping does; without either the call never counts as short."""
    CallEnd = msgspec.defstruct("CallEnd", [
        ("operator", Operator), ("call_id", Text), ("end_time", AwareTime), ("answered", bool),
        ("start_time", AwareTime | None, None),
        ("disposition", Literal["answered", "no_answer", "busy", "cancelled", "failed"] | None, None),
        ("answer_time", AwareTime | None, None),
        ("ring_s", Seconds | None, None),
        ("duration_s", Seconds | None, None),
        # whole numbers; JSON Schema counts 487.0 as an integer too, so they are numbers that are multiples of 1
        ("sip_code", Annotated[float, msgspec.Meta(ge=100, le=699, multiple_of=1)] | None, None),
        ("q850_cause", Annotated[float, msgspec.Meta(ge=0, le=127, multiple_of=1)] | None, None),
        ("release_side", Literal["caller", "callee", "network", "unknown"] | None, None),
    ], namespace={"__doc__": end_doc})
    return CallSetup, BatchRequest, CallEnd


class RequestTypes:
    """Decoders (strict msgspec) and OpenAPI schemas of the three request bodies, for these operators."""

    def __init__(self, operators: dict[str, str], a_patterns: dict[str, str], b_patterns: dict[str, str]) -> None:
        self.call_setup, self.batch, self.call_end = _requests(operators, a_patterns, b_patterns)
        self.decoders = {"/v1/score": msgspec.json.Decoder(self.call_setup),
                         "/v1/score/batch": msgspec.json.Decoder(self.batch),
                         "/v1/calls/end": msgspec.json.Decoder(self.call_end)}  # strict: no 12345 as a time

    def openapi_schemas(self) -> tuple[dict[str, str], dict[str, dict]]:
        """({path: request component name}, components) in OpenAPI 3.1 form."""
        refs, components = msgspec.json.schema_components(
            [self.call_setup, self.batch, self.call_end, ScoreResult, BatchResult, EndAck, ErrorBody, ModelInfo, Health],
            ref_template="#/components/schemas/{name}")
        names = {}
        for path, ref in zip(self.decoders, refs[:3], strict=True):
            if "$ref" in ref:
                names[path] = ref["$ref"].rsplit("/", 1)[1]
            else:  # a union of per-operator structs: give it a component of its own
                names[path] = "CallSetup"
                components["CallSetup"] = ref
        return names, components


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


