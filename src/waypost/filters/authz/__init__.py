"""ext_authz decisions for AuthPolicy and Consumer: the core (:mod:`.core`) over its types
(:mod:`.decision`), identity sources (:mod:`.identity_sources`), rules (:mod:`.rules`) and
per-version plans (:mod:`.plans`); its gRPC Check service (:mod:`.grpc_service`), its HTTP endpoint
(:mod:`.http_service`) and ``custom`` plugin loading (:mod:`.plugins`). The processes that serve
them are wired in :mod:`waypost.server.authz`."""

from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision, PluginResult, hash_api_key

__all__ = ["AuthRequest", "AuthzCore", "Decision", "PluginResult", "hash_api_key"]
