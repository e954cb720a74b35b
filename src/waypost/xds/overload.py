"""Envoy's overload manager and runtime settings, for the bootstrap (`waypost bootstrap`).

- Active downstream connections are capped for the whole Envoy (``--max-connections``); past the
  cap Envoy closes new connections at once, so a connection flood cannot exhaust file descriptors
  or memory, while established clients keep being served.
- With ``--max-heap`` Envoy watches its heap against that size: past 90% it returns freed memory
  to the system, past 95% it stops keeping connections alive, past 98% it answers new requests
  with 503 instead of falling over (the OOM killer would drop every connection at once).
- The RE2 program-size limits are raised: screening patterns (``Route.screen``) are compiled RE2
  programs a few hundred instructions long, above Envoy's default error level of 100.
"""

from __future__ import annotations

from typing import Any

from waypost.policies.regexes import MAX_PROGRAM_SIZE

__all__ = ["DEFAULT_MAX_CONNECTIONS", "LAYERED_RUNTIME", "build_overload_manager"]

# Envoy warns at start-up when nothing caps downstream connections; 50k is the figure of Envoy's
# edge-proxy best practices, far above what one waypost gateway node is expected to hold.
DEFAULT_MAX_CONNECTIONS = 50_000
_MONITORS = "type.googleapis.com/envoy.extensions.resource_monitors"
_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"
_HEAP = "envoy.resource_monitors.fixed_heap"
_RE2_ERROR_LEVEL = MAX_PROGRAM_SIZE  # what `waypost validate` checks policies' regexes against

LAYERED_RUNTIME: dict[str, Any] = {
    "layers": [
        {
            "name": "waypost",
            "static_layer": {
                "re2.max_program_size.error_level": _RE2_ERROR_LEVEL,
                "re2.max_program_size.warn_level": _RE2_ERROR_LEVEL,
            },
        },
        # Kept so `curl -X POST admin/runtime_modify` still works as on a default bootstrap.
        {"name": "admin", "admin_layer": {}},
    ]
}


def _trigger(resource: str, threshold: float) -> dict[str, Any]:
    return {"name": resource, "threshold": {"value": threshold}}


def build_overload_manager(*, max_connections: int, max_heap_bytes: int | None) -> dict[str, Any]:
    if max_connections < 1:
        raise ValueError(f"max_connections {max_connections} must be at least 1")
    monitors: list[dict[str, Any]] = [
        {
            "name": _CONNECTIONS,
            "typed_config": {
                "@type": f"{_MONITORS}.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": max_connections,
            },
        }
    ]
    manager: dict[str, Any] = {"resource_monitors": monitors}
    if max_heap_bytes is not None:
        if max_heap_bytes < 64 * 1024 * 1024:
            raise ValueError(
                f"max_heap_bytes {max_heap_bytes} is below 64 MiB: Envoy would refuse all traffic"
            )
        monitors.append(
            {
                "name": _HEAP,
                "typed_config": {
                    "@type": f"{_MONITORS}.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": max_heap_bytes,
                },
            }
        )
        manager["refresh_interval"] = "0.25s"
        manager["actions"] = [
            {"name": "envoy.overload_actions.shrink_heap", "triggers": [_trigger(_HEAP, 0.90)]},
            {"name": "envoy.overload_actions.disable_http_keepalive", "triggers": [_trigger(_HEAP, 0.95)]},
            {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [_trigger(_HEAP, 0.98)]},
        ]
    return manager
