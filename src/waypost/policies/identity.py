"""The request headers waypost may set to tell an upstream who the caller is.

CONTRACT (no forged identity): every name :func:`identity_headers` returns is removed from the
client's request before any filter or the decision service reads it, on every route of every
Gateway, whichever identity source (API key, JWT with or without the claim, mTLS, a plugin)
identified the caller, and on routes without auth. ``x-waypost-*`` is removed as a prefix beside
these names. A plugin's headers are known only when it runs: they replace a client's value when
the plugin sets them, and plugins should name them ``x-waypost-*`` to have them always removed.

Pure: reads the model, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from waypost.policies.model import AuthPolicy

__all__ = ["IDENTITY_HEADER_PREFIX", "RESERVED_HEADERS", "credential_headers", "identity_headers"]

IDENTITY_HEADER_PREFIX = "x-waypost-"  # = waypost.contract.IDENTITY_HEADER_PREFIX (a layer above)
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade", "cookie"}
)
"""Headers a request needs to be routed or read at all: never an identity header."""


def identity_headers(auth_policies: Mapping[str, AuthPolicy] | Iterable[AuthPolicy]) -> tuple[str, ...]:
    """Every ``claims_to_headers`` target of these AuthPolicies, lower-case, sorted; names under
    the ``x-waypost-`` prefix are left out (the prefix covers them)."""
    policies = auth_policies.values() if isinstance(auth_policies, Mapping) else auth_policies
    return tuple(
        sorted(
            {
                header.lower()
                for policy in policies
                for source in policy.identity
                if source.jwt is not None
                for header in source.jwt.claims_to_headers.values()
                if not header.lower().startswith(IDENTITY_HEADER_PREFIX)
            }
        )
    )


def credential_headers(auth_policies: Mapping[str, AuthPolicy] | Iterable[AuthPolicy]) -> frozenset[str]:
    """The headers that carry credentials (API keys, tokens): never an identity header, or
    removing forged identities would remove the credential too."""
    policies = auth_policies.values() if isinstance(auth_policies, Mapping) else auth_policies
    return frozenset(
        spec.header.lower()
        for policy in policies
        for source in policy.identity
        for spec in (source.api_key, source.jwt)
        if spec is not None
    )
