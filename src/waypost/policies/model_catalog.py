"""Api and Portal: the developer portal's catalog (routes grouped into products with docs and
plans) and the portal's own settings.

Data only, no I/O. The gateway enforces nothing new for an Api; its plans select the plan limits
of :class:`~waypost.policies.model_consumers.RateLimitPolicy`.
"""

from __future__ import annotations

from datetime import date
from typing import Literal, Self

from pydantic import Field, StrictBool, StrictStr, model_validator

from waypost.policies.model_base import Document, Spec
from waypost.policies.types import Name

__all__ = [
    "Api",
    "ApiPlan",
    "Portal",
    "PortalAdmin",
    "PortalOidc",
]


class ApiPlan(Spec):
    """A plan consumers may subscribe on; its limits are the RateLimitPolicies' plan of this name."""

    approval: StrictBool = Field(
        default=True, description="true: a request waits for an admin; false: granted at once."
    )
    description: StrictStr = Field(default="", max_length=2000)


class Api(Document):
    """A product in the developer portal: routes grouped under a title, with docs and plans.

    The gateway enforces nothing new for an Api: a Consumer's ``subscriptions`` naming it stand
    for subscriptions to each of its routes, and a subscription's plan selects the plan limits of
    those routes' RateLimitPolicies. Everything else here is what the portal shows.
    """

    kind: Literal["Api"] = "Api"
    title: StrictStr = Field(min_length=1, max_length=200)
    version: StrictStr = Field(min_length=1, max_length=50)
    summary: StrictStr = Field(default="", max_length=500)
    description: StrictStr = Field(default="", max_length=100_000, description="Markdown.")
    routes: tuple[Name, ...] = Field(min_length=1, description="The Routes this Api covers.")
    openapi: StrictStr | None = Field(
        default=None, description="An OpenAPI document (JSON or YAML), relative to the policy directory."
    )
    plans: dict[StrictStr, ApiPlan] = Field(
        default_factory=dict,
        description="Plans offered, by name; each a plan of a RateLimitPolicy of the Api's routes.",
    )
    approval: StrictBool = Field(
        default=True, description="Without plans: whether a subscription waits for an admin."
    )
    lifecycle: Literal["beta", "stable", "deprecated"] = "stable"
    sunset: date | None = Field(default=None, description="When a deprecated Api stops (required then).")

    @model_validator(mode="after")
    def _sunset_with_deprecated(self) -> Self:
        if (self.lifecycle == "deprecated") != (self.sunset is not None):
            raise ValueError("sunset is required for a deprecated Api, and only for one")
        return self

    def needs_approval(self, plan: str | None) -> bool:
        if plan is None:
            return self.approval
        found = self.plans.get(plan)
        return True if found is None else found.approval


class PortalAdmin(Spec):
    """Exactly one of ``consumer`` (signed in with its API key) or ``subject`` (OIDC ``sub``)."""

    consumer: Name | None = None
    subject: StrictStr | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.consumer is None) == (self.subject is None):
            raise ValueError("each admin has exactly one of consumer, subject")
        return self


class PortalOidc(Spec):
    """Sign-in through an OpenID provider (authorization-code flow)."""

    issuer: StrictStr = Field(pattern=r"^https?://", description="Its discovery document is under it.")
    client_id: StrictStr = Field(min_length=1)
    client_secret_env: StrictStr = Field(
        default="WAYPOST_OIDC_CLIENT_SECRET",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="The environment variable holding the client secret (never in git).",
    )


class Portal(Document):
    """The developer portal's settings (at most one Portal document)."""

    kind: Literal["Portal"] = "Portal"
    title: StrictStr = Field(default="API portal", min_length=1, max_length=200)
    admins: tuple[PortalAdmin, ...] = ()
    signup: Literal["open", "approval", "closed"] = Field(
        default="approval",
        description="open: a sign-up lands at once; approval: it waits for an admin; closed: none.",
    )
    oidc: PortalOidc | None = None
    gateway_url: StrictStr | None = Field(
        default=None, pattern=r"^https?://", description="Where the console sends requests."
    )

    def is_admin(self, *, consumer: str | None = None, subject: str | None = None) -> bool:
        return any(
            (consumer is not None and admin.consumer == consumer)
            or (subject is not None and admin.subject == subject)
            for admin in self.admins
        )
