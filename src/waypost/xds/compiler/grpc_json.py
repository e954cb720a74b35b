"""Route.grpc_json -> Envoy's gRPC-JSON transcoder, configured per route.

A JSON client calls ``POST /package.Service/Method`` with a JSON body (or the URL a method's
``google.api.http`` annotation gives); Envoy turns it into a gRPC call to the route's backend and
the answer back into JSON, mapping gRPC statuses to HTTP ones. The descriptor set travels inside
the config (``proto_descriptor_bin``), never as a file on the Envoy host. The route that matched
the JSON request keeps serving it (``match_incoming_request_route``), so one Route reads as one
behaviour. gRPC clients on the same route pass through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from waypost.policies.model import Gateway, GrpcJson, PolicySet, Route
from waypost.xds.compiler.pb import pack

__all__ = ["GrpcJsonFeature", "build_transcoder"]

FILTER_NAME = "envoy.filters.http.grpc_json_transcoder"


def build_transcoder(grpc_json: GrpcJson, files: Mapping[str, bytes]) -> transcoder_pb2.GrpcJsonTranscoder:
    return transcoder_pb2.GrpcJsonTranscoder(
        proto_descriptor_bin=bytes(files[grpc_json.descriptor]),
        services=list(grpc_json.services),
        auto_mapping=True,
        match_incoming_request_route=True,
        print_options=transcoder_pb2.GrpcJsonTranscoder.PrintOptions(always_print_primitive_fields=True),
    )


class GrpcJsonFeature:
    filter_name = FILTER_NAME

    def __init__(self, files: Mapping[str, bytes] | None = None) -> None:
        self.files: Mapping[str, bytes] = files or {}

    def bind(self, policy: PolicySet) -> Self:
        """This feature needs the descriptor files the policy names."""
        return type(self)(policy.files)

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(route.grpc_json is not None for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        # The filter needs a valid config of its own; it is off by default and each transcoding
        # route switches it on with its own descriptor.
        first = next(route.grpc_json for route in routes if route.grpc_json is not None)
        return hcm_pb2.HttpFilter(
            name=FILTER_NAME, typed_config=pack(build_transcoder(first, self.files)), disabled=True
        )

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if route.grpc_json is not None:
            config = build_transcoder(route.grpc_json, self.files)
            xds_route.typed_per_filter_config[FILTER_NAME].CopyFrom(pack(config))
