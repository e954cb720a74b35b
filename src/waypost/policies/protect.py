"""Threat-protection blocks of a Route: request validation, injection screening, upgrades.

Data only, like :mod:`waypost.policies.model` (which puts these on `Route`). The schema files
a `validation` block names are read and compiled by the loader (a schema that does not compile
is a `file:line` error there); the rule set names are those of :mod:`waypost.policies.screening`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from waypost.policies.types import Duration, HeaderName

__all__ = ["SCREEN_CATEGORIES", "AdmissionControl", "Screen", "UserAgents", "Validate"]

ScreenCategory = Literal["sqli", "xss", "traversal", "command"]
SCREEN_CATEGORIES: tuple[ScreenCategory, ...] = ("sqli", "xss", "traversal", "command")
BodyBytes = Annotated[StrictInt, Field(ge=1, le=8 * 1024 * 1024)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Validate(_Spec):
    """Check requests before the backend sees them; a failure is a 400 naming each location.

    Exactly one of `json_schema` (a JSON Schema for the body) or `openapi` (an OpenAPI 3 document:
    the operation is found by the request's method and path template, and its parameters, headers,
    content types and body schema are checked). Bodies go to waypost's decision service, so a
    validating route needs `waypost bootstrap --authz`.
    """

    json_schema: StrictStr | None = Field(
        default=None,
        description="JSON Schema (JSON or YAML) of the body, relative to the policy directory.",
    )
    openapi: StrictStr | None = Field(
        default=None, description="OpenAPI 3.0/3.1 document (JSON or YAML), relative to the policy directory."
    )
    query_schema: StrictStr | None = Field(
        default=None,
        description="With json_schema: a JSON Schema of the query parameters as an object "
        "(values are strings; a name given twice is a list).",
    )
    content_types: tuple[StrictStr, ...] = Field(
        default=("application/json",),
        min_length=1,
        description="With json_schema: accepted media types of a request with a body (OpenAPI: the "
        "operation's requestBody content).",
    )
    headers: tuple[HeaderName, ...] = Field(default=(), description="Headers every request must carry.")
    max_body_bytes: BodyBytes = Field(
        default=65536, description="Larger bodies get 413; the decision service never sees more."
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if (self.json_schema is None) == (self.openapi is None):
            raise ValueError("exactly one of json_schema, openapi is required")
        if self.query_schema is not None and self.openapi is not None:
            raise ValueError(
                "query_schema goes with json_schema; an OpenAPI operation declares its parameters"
            )
        return self

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.json_schema, self.openapi, self.query_schema) if f is not None)


class Screen(_Spec):
    """Screen requests for injection attacks with waypost's `core` rule set.

    Path, query and `headers` are screened by Envoy itself (RE2 patterns, no call to waypost);
    `body: true` also screens the body's text (JSON string values) in the decision service.
    `mode: log` counts and logs matches without refusing them (to try the rules on live traffic).
    """

    mode: Literal["block", "log"] = Field(default="block", description="block: 403; log: count and log only.")
    rules: tuple[ScreenCategory, ...] = Field(
        default=SCREEN_CATEGORIES, min_length=1, description="Categories of the rule set to apply."
    )
    headers: tuple[HeaderName, ...] = Field(
        default=("user-agent", "referer", "cookie"), description="Request headers screened besides the path."
    )
    body: StrictBool = Field(default=False, description="Also screen the body (in the decision service).")
    max_body_bytes: BodyBytes = Field(default=65536, description="Larger bodies get 413 when body is true.")

    @model_validator(mode="after")
    def _no_pseudo_headers(self) -> Self:
        if any(h.startswith(":") for h in self.headers):
            raise ValueError("headers: the path is always screened; name regular headers only")
        return self


class AdmissionControl(_Spec):
    """Shed load in Envoy when a Service fails: as its success rate over `window` falls below
    `success_rate`, a growing share of its requests get 503 from Envoy without reaching it."""

    success_rate: Annotated[float, Field(strict=True, gt=0, le=100, allow_inf_nan=False)] = Field(
        default=95.0, description="Percent of requests (non-5xx answers) below which Envoy starts shedding."
    )
    window: Duration = Field(default=30_000, description="How far back the success rate looks.")
    min_rps: Annotated[StrictInt, Field(ge=0)] = Field(
        default=5, description="Below this many requests per second, never shed."
    )
    max_rejection: Annotated[float, Field(strict=True, gt=0, le=100, allow_inf_nan=False)] = Field(
        default=80.0, description="Percent of requests shed at most."
    )


class UserAgents(_Spec):
    """Clients by `user-agent` (RE2 patterns matched against the whole value, e.g. `(?i).*curl.*`).
    With `allow`, a request whose user-agent matches none of them (or has none) gets 403; a
    user-agent matching `deny` gets 403 in any case."""

    allow: tuple[StrictStr, ...] = ()
    deny: tuple[StrictStr, ...] = ()

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.allow and not self.deny:
            raise ValueError("user_agents needs allow, deny or both")
        return self
