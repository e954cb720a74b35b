"""AuthPolicy: who a request comes from (identity sources: API key, JWT, mTLS, custom plugin) and
what it may do (allow/deny rules, CEL conditions).

Data only, no I/O. A rule's ``when`` expression is compiled when the document is loaded, so a typo
fails with file:line rather than at the first request.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, StrictBool, StrictStr, field_validator, model_validator

from waypost.policies.cel_env import check_expression
from waypost.policies.model_base import Document, HttpMethod, Spec
from waypost.policies.types import Duration, HeaderName, RequestHeaderName

__all__ = [
    "ApiKeyIdentity",
    "AuthPolicy",
    "CustomIdentity",
    "IdentitySource",
    "JwtIdentity",
    "MtlsIdentity",
    "Rule",
    "RuleMatch",
]


class ApiKeyIdentity(Spec):
    header: RequestHeaderName = "x-api-key"


class JwtIdentity(Spec):
    issuer: StrictStr
    audiences: tuple[StrictStr, ...] = ()
    jwks: StrictStr = Field(description="A JWKS file relative to the policy directory, or an https:// URL.")
    claims_to_headers: dict[StrictStr, HeaderName] = Field(default_factory=dict)
    header: RequestHeaderName = "authorization"


class MtlsIdentity(Spec):
    pass


class CustomIdentity(Spec):
    plugin: StrictStr = Field(
        pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$", description="module:function"
    )
    timeout: Duration = 1000


class IdentitySource(Spec):
    """Exactly one of the keys: the credential to look for."""

    api_key: ApiKeyIdentity | None = None
    jwt: JwtIdentity | None = None
    mtls: MtlsIdentity | None = None
    custom: CustomIdentity | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [key for key in ("api_key", "jwt", "mtls", "custom") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("each identity entry has exactly one of api_key, jwt, mtls, custom")
        return self


class RuleMatch(Spec):
    roles: tuple[StrictStr, ...] = ()
    scopes: tuple[StrictStr, ...] = ()
    methods: tuple[HttpMethod, ...] = ()
    paths: tuple[StrictStr, ...] = ()
    when: StrictStr | None = Field(default=None, description="A CEL expression over request and identity.")

    @field_validator("when")
    @classmethod
    def _cel_compiles(cls, value: str | None) -> str | None:
        # A typo in a rule must fail at load time with file:line, never at the first request.
        if value is not None:
            check_expression(value)
        return value


class Rule(Spec):
    allow: RuleMatch | None = None
    deny: RuleMatch | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("each rule has exactly one of allow, deny")
        return self


class AuthPolicy(Document):
    kind: Literal["AuthPolicy"] = "AuthPolicy"
    identity: tuple[IdentitySource, ...] = Field(min_length=1)
    rules: tuple[Rule, ...] = ()
    mode: Literal["enforce", "dry_run"] = "enforce"
    shared: StrictBool = Field(
        default=False, description="Platform documents only: Routes of every Team may use it (see Team)."
    )
