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
from google.protobuf import any_pb2, json_format, message, symbol_database

from waypost.xds.compiler import NodeResources
from waypost.xds.overload import LAYERED_RUNTIME
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
            _sort_maps(resources[type_url][name], data)
            if type_url is TypeUrl.SECRET and redact:
                _redact_secret(data)
            items.append(data)
        rendered[section] = items
    return rendered


def _sort_maps(msg: message.Message, data: Any) -> None:
    """Order protobuf map entries by key: map iteration order is per process, and renders (golden
    files above all) must not change from one run to the next."""
    if not isinstance(data, dict):
        return
    if isinstance(msg, any_pb2.Any):
        inner = _unpack_any(msg)
        if inner is not None:
            _sort_maps(inner, data)
        return
    for field, value in msg.ListFields():
        key = field.name
        if key not in data:
            continue
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            data[key] = _sorted_json(data[key])
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for map_key, item in value.items():
                    _sort_maps(item, data[key].get(str(map_key)))
            data[key] = dict(sorted(data[key].items()))
        elif field.message_type is not None:
            if field.is_repeated:
                for item, item_data in zip(value, data[key], strict=False):
                    _sort_maps(item, item_data)
            else:
                _sort_maps(value, data[key])


def _unpack_any(packed: any_pb2.Any) -> message.Message | None:
    try:
        cls = symbol_database.Default().GetSymbol(packed.TypeName())
    except KeyError:
        return None
    inner = cls()
    packed.Unpack(inner)
    return inner


def _sorted_json(node: Any) -> Any:
    """A Struct renders as plain JSON whose key order follows the map's: sort it all the way down."""
    if isinstance(node, dict):
        return {key: _sorted_json(node[key]) for key in sorted(node)}
    if isinstance(node, list):
        return [_sorted_json(item) for item in node]
    return node


def _redact_secret(secret: dict[str, Any]) -> None:
    private_key = secret.get("tls_certificate", {}).get("private_key")
    if private_key is not None:
        secret["tls_certificate"]["private_key"] = {"inline_bytes": REDACTED}


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


# libyaml's emitter: the pure-Python one took ~9 of the 14 s `waypost render` needed for a node of
# 500 routes. The representers (below) stay Python, so the output is the same text.
class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
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
        _strip_sds_sources(cluster.get("transport_socket", {}))
        if cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            service = cluster.pop("eds_cluster_config").get("service_name") or cluster["name"]
            cluster["load_assignment"] = endpoints.get(service, {"cluster_name": cluster["name"]})
        clusters.append(cluster)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
            "secrets": rendered["secrets"],
        },
        "layered_runtime": LAYERED_RUNTIME,
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
