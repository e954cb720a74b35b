"""Consumer and RateLimitPolicy: who calls (keys, roles, plan, subscriptions, portal account) and
how much they may (limits, and limits per plan).

Data only, no I/O. API keys are held only as ``sha256:`` hashes.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal, Self

from pydantic import Field, StrictBool, StrictStr, model_validator

from waypost.policies.model_base import Document, PositiveInt, Spec, StringMap
from waypost.policies.types import Name, RateUnit, ScopedName

__all__ = [
    "ApiKeyHash",
    "Consumer",
    "ConsumerAccount",
    "KeyInfo",
    "Limit",
    "PlanLimit",
    "RateLimitPolicy",
    "Subscription",
    "SubscriptionStatus",
]


ApiKeyHash = Annotated[StrictStr, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


SubscriptionStatus = Literal["approved", "pending", "revoked"]


class Subscription(Spec):
    """Access to one Route, or to every route of one Api (exactly one of ``route``, ``api``)."""

    route: Name | None = None
    api: ScopedName | None = Field(
        default=None,
        description="An Api: covers every route it lists (a Team's Api: `<team>~<name>`, or its own"
        " team's by name).",
    )
    plan: StrictStr | None = Field(
        default=None,
        description="With `api`: one of the Api's plans; on its routes it replaces the Consumer's plan.",
    )
    status: SubscriptionStatus

    @model_validator(mode="after")
    def _exactly_one_target(self) -> Self:
        if (self.route is None) == (self.api is None):
            raise ValueError("each subscription has exactly one of route, api")
        if self.plan is not None and self.api is None:
            raise ValueError("plan goes with api: a route subscription takes the Consumer's plan")
        return self

    @property
    def target(self) -> tuple[Literal["route", "api"], str]:
        return ("api", self.api) if self.api is not None else ("route", self.route or "")


class KeyInfo(Spec):
    """What the portal shows of a key it issued: never the key, only its public prefix and date."""

    prefix: StrictStr = Field(pattern=r"^[A-Za-z0-9_]{1,16}$")
    created: date


class ConsumerAccount(Spec):
    """Written by the developer portal: who this Consumer is there. No effect on decisions."""

    email: StrictStr | None = Field(default=None, max_length=254)
    subject: StrictStr | None = Field(
        default=None, max_length=255, description="The OpenID Connect `sub` that signs in as this Consumer."
    )
    keys: dict[ApiKeyHash, KeyInfo] = Field(
        default_factory=dict, description="Prefix and creation date of keys in `api_keys`, by hash."
    )


class Consumer(Document):
    kind: Literal["Consumer"] = "Consumer"
    plan: StrictStr | None = None
    roles: tuple[StrictStr, ...] = ()
    labels: StringMap = Field(default_factory=dict)
    api_keys: tuple[ApiKeyHash, ...] = ()
    subscriptions: tuple[Subscription, ...] | None = None
    account: ConsumerAccount | None = None


class Limit(Spec):
    by: StrictStr = Field(pattern=r"^(consumer|client_ip|route|header:[a-zA-Z0-9!#$%&'*+.^`|~-]+)$")
    requests: PositiveInt
    per: RateUnit
    scope: Literal["global", "local"] = "global"


class PlanLimit(Spec):
    requests: PositiveInt
    per: RateUnit


class RateLimitPolicy(Document):
    kind: Literal["RateLimitPolicy"] = "RateLimitPolicy"
    limits: tuple[Limit, ...] = ()
    plans: dict[StrictStr, PlanLimit] = Field(default_factory=dict)
    shadow: StrictBool = False
    shared: StrictBool = Field(
        default=False, description="Platform documents only: Routes of every Team may use it (see Team)."
    )
