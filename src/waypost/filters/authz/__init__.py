"""ext_authz decisions for AuthPolicy and Consumer: the core (:mod:`.core`), its gRPC Check
service (:mod:`.grpc_service`) and the process that serves it (:mod:`.server`)."""

from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision, PluginResult, hash_api_key

__all__ = ["AuthRequest", "AuthzCore", "Decision", "PluginResult", "hash_api_key"]
