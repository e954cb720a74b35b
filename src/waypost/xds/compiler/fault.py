"""Route.fault_injection -> Envoy's fault filter: delay and/or abort a share of a route's requests.

The filter in the chain injects nothing; each faulty route carries its own HTTPFault config.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from waypost.policies.model import Fault, Gateway, Route
from waypost.xds.compiler.pb import duration, pack, percent

__all__ = ["FaultFeature", "build_fault"]

FILTER_NAME = "envoy.filters.http.fault"


def build_fault(fault: Fault) -> fault_pb2.HTTPFault:
    config = fault_pb2.HTTPFault()
    if fault.delay is not None:
        config.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=duration(fault.delay.duration), percentage=percent(fault.delay.percent)
            )
        )
    if fault.abort is not None:
        config.abort.CopyFrom(
            fault_pb2.FaultAbort(http_status=fault.abort.status, percentage=percent(fault.abort.percent))
        )
    return config


class FaultFeature:
    filter_name = FILTER_NAME

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return any(route.fault_injection is not None for route in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        return hcm_pb2.HttpFilter(name=FILTER_NAME, typed_config=pack(fault_pb2.HTTPFault()))

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if route.fault_injection is not None:
            xds_route.typed_per_filter_config[FILTER_NAME].CopyFrom(pack(build_fault(route.fault_injection)))
