"""Render compiled resources for people and for Envoy's validator.

``render_resources`` gives the plain-data form ``waypost render`` prints and golden tests check
in (private keys redacted). ``static_bootstrap`` turns a node's resources into one static Envoy
bootstrap (RDS inlined, EDS clusters made STATIC, SDS secrets static) so that
``envoy --mode validate`` can check everything waypost would send over xDS.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from google.protobuf import json_format

from waypost.xds.bootstrap import RATELIMIT_CLUSTER
from waypost.xds.compiler import NodeResources
from waypost.xds.types import TypeUrl

__all__ = ["REDACTED", "dump_yaml", "render_resources", "static_bootstrap"]

REDACTED = "<redacted>"
SECTIONS: dict[TypeUrl, str] = {
    TypeUrl.LISTENER: "listeners",
    TypeUrl.ROUTE: "routes",
    TypeUrl.CLUSTER: "clusters",
    TypeUrl.ENDPOINT: "endpoints",
    TypeUrl.SECRET: "secrets",
}


def render_resources(resources: NodeResources, *, redact: bool = True) -> dict[str, list[dict[str, Any]]]:
    rendered: dict[str, list[dict[str, Any]]] = {}
    for type_url, section in SECTIONS.items():
        items = []
        for name in sorted(resources.get(type_url, {})):
            # The JSON round trip turns the OrderedDicts of expanded Any fields into plain data.
            data = json.loads(
                json.dumps(
                    json_format.MessageToDict(resources[type_url][name], preserving_proto_field_name=True)
                )
            )
            if type_url is TypeUrl.SECRET and redact:
                _redact_secret(data)
            items.append(_sort_maps(data))
        rendered[section] = items
    return rendered


# Protobuf map fields iterate in a per-process hash order; rendered output must be stable.
_MAP_FIELDS = frozenset({"typed_per_filter_config", "typed_extension_protocol_options", "filter_metadata"})


def _sort_maps(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            key: (
                {k: _sort_maps(v) for k, v in sorted(value.items())}
                if key in _MAP_FIELDS and isinstance(value, dict)
                else _sort_maps(value)
            )
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_sort_maps(item) for item in data]
    return data


def _redact_secret(secret: dict[str, Any]) -> None:
    private_key = secret.get("tls_certificate", {}).get("private_key")
    if private_key is not None:
        secret["tls_certificate"]["private_key"] = {"inline_bytes": REDACTED}


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_presenter)


def static_bootstrap(resources: NodeResources, *, admin_port: int = 0) -> dict[str, Any]:
    """A self-contained bootstrap holding a node's resources, for ``envoy --mode validate``."""
    rendered = render_resources(resources, redact=False)
    routes = {r["name"]: r for r in rendered["routes"]}
    endpoints = {e["cluster_name"]: e for e in rendered["endpoints"]}
    listeners = [_inline_listener(copy.deepcopy(listener), routes) for listener in rendered["listeners"]]
    clusters = []
    for cluster in copy.deepcopy(rendered["clusters"]):
        if cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            service = cluster.pop("eds_cluster_config").get("service_name") or cluster["name"]
            cluster["load_assignment"] = endpoints.get(service, {"cluster_name": cluster["name"]})
        clusters.append(cluster)
    if _RATELIMIT_FILTER in json.dumps(rendered["listeners"]):
        # The rate-limit cluster comes from the real bootstrap; validation needs a stand-in.
        clusters.append(_bootstrap_cluster(RATELIMIT_CLUSTER))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
            "secrets": rendered["secrets"],
        },
    }


def _inline_listener(listener: dict[str, Any], routes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            config = network_filter.get("typed_config", {})
            rds = config.pop("rds", None)
            if rds is not None:
                config["route_config"] = routes[rds["route_config_name"]]
        _strip_sds_sources(chain.get("transport_socket", {}))
    return listener


def _strip_sds_sources(node: Any) -> None:
    """SDS configs become references to static secrets of the same name."""
    if isinstance(node, dict):
        for key in ("tls_certificate_sds_secret_configs",):
            for config in node.get(key, []):
                config.pop("sds_config", None)
        validation = node.get("validation_context_sds_secret_config")
        if isinstance(validation, dict):
            validation.pop("sds_config", None)
        for value in node.values():
            _strip_sds_sources(value)
    elif isinstance(node, list):
        for value in node:
            _strip_sds_sources(value)


_RATELIMIT_FILTER = "envoy.filters.http.ratelimit"


def _bootstrap_cluster(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}
                            }
                        }
                    ]
                }
            ],
        },
    }
