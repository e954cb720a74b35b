"""Rate-limit decisions: Envoy's RateLimitService (RLS) over gRPC, backed by a counter store.

:mod:`descriptors` is the contract with the compiler, :mod:`table` turns a PolicySet into the
limits by descriptor, :mod:`store` counts (in process or in Redis), :mod:`service` answers
``ShouldRateLimit``.
"""
