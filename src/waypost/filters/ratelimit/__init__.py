"""Rate-limit decisions: Envoy's RateLimitService (RLS) over gRPC, backed by a counter store.

:mod:`waypost.contract` holds the descriptor layout shared with the compiler; :mod:`table` turns
a PolicySet into the limits by descriptor, :mod:`store` counts (in process or in Redis),
:mod:`limiter` decides and :mod:`service` answers ``ShouldRateLimit``.
"""
