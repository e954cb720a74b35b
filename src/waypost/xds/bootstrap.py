"""The Envoy bootstrap that points an Envoy at waypost.

An Envoy needs exactly one static thing to join a waypost fleet: how to reach the control plane.
Everything else (listeners, routes, clusters, secrets, and the clusters of the decision services)
arrives over one ADS stream. This module
renders that bootstrap as plain data (:func:`build_bootstrap`) or YAML (:func:`render_bootstrap`);
``waypost bootstrap`` prints the latter.

The node's identity is what waypost selects Gateways by: ``node.cluster`` and the labels under
``node.metadata.labels`` (see ``Gateway.nodes`` in the policy format).

Every string of the YAML is double-quoted: Envoy's YAML reader guesses the type of a plain scalar
(``n``, ``on``, ``null``, ``1e3``, ``0x10`` stop being strings), and a node id must stay the node
id whatever it is.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec

import yaml

from waypost.contract import XDS_CLUSTER
from waypost.xds.overload import DEFAULT_MAX_CONNECTIONS, LAYERED_RUNTIME, build_overload_manager

__all__ = [
    "XDS_CLUSTER",
    "build_bootstrap",
    "dump_bootstrap",
    "parse_host_port",
    "render_bootstrap",
]


P = ParamSpec("P")

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# How Envoy re-opens the ADS stream after it drops (waypost restart, network blip). Envoy's own
# default is 500ms growing to 30s; a shorter ceiling means a restarted control plane is picked up
# within seconds, and Envoy adds jitter, so a fleet does not reconnect in lock step.
_ADS_RETRY_BASE = "0.25s"
_ADS_RETRY_MAX = "5s"


def build_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    xds_host: str,
    xds_port: int,
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    labels: Mapping[str, str] | None = None,
    delta: bool = False,
    xds_tls_ca: str | None = None,
    xds_client_cert: str | None = None,
    xds_client_key: str | None = None,
    xds_sni: str | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_heap_bytes: int | None = None,
    register: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Return an Envoy v3 bootstrap (as JSON-compatible data) that takes all config from waypost.

    ``xds_host`` may be an IP address (the cluster is STATIC) or a host name (STRICT_DNS, e.g.
    ``waypost`` inside docker compose). ``admin_port`` 0 lets Envoy pick a port (read it back
    with ``envoy --admin-address-path``). ``delta`` selects incremental xDS (DELTA_GRPC) instead of
    state-of-the-world. The decision services' clusters are not here: waypost delivers them over
    CDS/EDS to the nodes whose routes need them.

    ``xds_tls_ca`` (a path on the Envoy host) makes Envoy reach waypost over TLS and verify its
    certificate against that CA and the name ``xds_sni`` (default: ``xds_host``; an IP address is
    matched as an IP SAN). ``xds_client_cert``/``xds_client_key`` make Envoy present a client
    certificate, for a waypost serving mTLS (``waypost serve --xds-ca``).
    ``register`` (service, "ip:port") makes this Envoy an endpoint of that Service while it is
    connected, where the policy allows it.
    ``max_connections`` caps open client connections; ``max_heap_bytes`` turns on Envoy's heap
    overload actions (see :mod:`waypost.xds.overload`).
    """
    if not node_id:
        raise ValueError("node_id must not be empty")
    if not node_cluster:
        raise ValueError("node_cluster must not be empty")
    if not 1 <= xds_port <= 65535:
        raise ValueError(f"xds_port {xds_port} is not between 1 and 65535")
    if not 0 <= admin_port <= 65535:
        raise ValueError(f"admin_port {admin_port} is not between 0 and 65535")

    if (xds_client_cert is None) != (xds_client_key is None):
        raise ValueError("xds_client_cert and xds_client_key go together")
    if xds_client_cert is not None and xds_tls_ca is None:
        raise ValueError("a client certificate needs xds_tls_ca: waypost's certificate must be verified")
    if xds_sni is not None and xds_tls_ca is None:
        raise ValueError("xds_sni needs xds_tls_ca")

    host = _strip_brackets(xds_host)
    xds_cluster = _xds_cluster(host, xds_port)
    if xds_tls_ca is not None:
        xds_cluster["transport_socket"] = _xds_tls(host, xds_tls_ca, xds_client_cert, xds_client_key, xds_sni)
    static_clusters = [xds_cluster]
    # waypost reads the node's labels from here to match Gateway `nodes: {labels: ...}`.
    metadata: dict[str, Any] = {"labels": {str(k): str(v) for k, v in sorted((labels or {}).items())}}
    if register is not None:
        metadata["register"] = {"service": register[0], "address": register[1]}
    return {
        "node": {"id": node_id, "cluster": node_cluster, "metadata": metadata},
        "admin": {
            "address": _socket_address(_strip_brackets(admin_address), admin_port),
            # Operators and health probes must still reach admin when the connection cap is hit.
            "ignore_global_conn_limit": True,
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            # For xDS streams Envoy uses only the back-off of this policy: how long
                            # to wait before re-opening a failed stream.
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": _ADS_RETRY_BASE,
                                    "max_interval": _ADS_RETRY_MAX,
                                }
                            },
                        }
                    }
                ],
                # The node (with its labels) is sent once per stream, not on every request.
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": static_clusters},
        "overload_manager": build_overload_manager(
            max_connections=max_connections, max_heap_bytes=max_heap_bytes
        ),
        "layered_runtime": LAYERED_RUNTIME,
    }


def _as_yaml(build: Callable[P, dict[str, Any]]) -> Callable[P, str]:
    """``build``'s bootstrap as a YAML document with a comment header; same arguments."""

    @functools.wraps(build)
    def render(*args: P.args, **kwargs: P.kwargs) -> str:
        data = build(*args, **kwargs)
        node = data["node"]
        header = (
            # repr() keeps a stray newline in an id from breaking out of the comment.
            f"# Envoy bootstrap by `waypost bootstrap`: node {node['id']!r}, cluster {node['cluster']!r}.\n"
            "# Only the way to waypost is static; the rest (decision services too) comes over ADS.\n"
        )
        return header + dump_bootstrap(data)

    render.__doc__ = ":func:`build_bootstrap` as a YAML document, ready for ``envoy -c``."
    return render


class _QuotingDumper(yaml.SafeDumper):
    """Every string double-quoted, keys included (label keys are the user's too)."""


def _quoted(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')


_QuotingDumper.add_representer(str, _quoted)


def dump_bootstrap(data: dict[str, Any]) -> str:
    """A bootstrap as YAML whose every string is quoted (Envoy cannot re-type any of them)."""
    text: str = yaml.dump(data, Dumper=_QuotingDumper, sort_keys=False, default_flow_style=False)
    return text


render_bootstrap = _as_yaml(build_bootstrap)


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` / ``[V6]:PORT`` (the ``--xds`` argument) into host and port."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"'{text}' is not HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"'{text}': port must be between 1 and 65535")
    bracketed = host.startswith("[") and host.endswith("]")
    host = _strip_brackets(host)
    # `::1:18000` is ambiguous (is 18000 part of the address?); URLs settled on brackets.
    if ":" in host and not (bracketed and _is_ip(host)):
        raise ValueError(f"'{text}': write an IPv6 address as [ADDRESS]:PORT")
    return host, port


def _xds_cluster(host: str, port: int) -> dict[str, Any]:
    return _grpc_cluster(XDS_CLUSTER, host, port)


def _grpc_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        # An IP needs no resolver; a name (compose service, k8s Service) is re-resolved, so a
        # control plane that moves to a new address is followed.
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}],
        },
        # ADS is gRPC, so the stream must be HTTP/2. The keepalive PINGs notice a control plane
        # that vanished without closing the connection (host died, NAT dropped the flow), so
        # Envoy reconnects instead of waiting on a dead stream forever.
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
            }
        },
        # TCP keepalive as well, for middleboxes that drop idle flows below the HTTP/2 layer.
        "upstream_connection_options": {
            "tcp_keepalive": {"keepalive_time": 60, "keepalive_interval": 10, "keepalive_probes": 3}
        },
    }
    if cluster["type"] == "STRICT_DNS":
        # `localhost` and compose names may resolve to both families while waypost usually
        # listens on IPv4 only; prefer v4 and fall back to v6.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


_UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _xds_tls(
    host: str, ca: str, client_cert: str | None, client_key: str | None, sni: str | None
) -> dict[str, Any]:
    name = sni or host
    # A trusted CA alone checks the chain, not whose certificate it is: pin the expected name.
    san_type = "IP_ADDRESS" if sni is None and _is_ip(host) else "DNS"
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],  # gRPC
        "validation_context": {
            "trusted_ca": {"filename": ca},
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}],
        },
    }
    if client_cert is not None and client_key is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": client_cert}, "private_key": {"filename": client_key}}
        ]
    context: dict[str, Any] = {"@type": f"type.googleapis.com/{_UPSTREAM_TLS}", "common_tls_context": common}
    if san_type == "DNS":
        context["sni"] = name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
