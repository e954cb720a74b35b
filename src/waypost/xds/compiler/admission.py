"""Service.admission_control -> Envoy's admission control filter, one per Service.

Envoy's filter keeps one success-rate state per filter instance, so "per Service" means one
filter per Service that asks (``waypost.admission.<service>``) on each gateway routing to it,
switched off (``FilterConfig.disabled``) on every route that does not send to that Service. A
route splitting traffic between Services counts toward each of them that asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.admission_control.v3 import admission_control_pb2 as ac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.v3 import percent_pb2, range_pb2

from waypost.policies.model import Gateway, PolicySet, Route, Service
from waypost.xds.compiler.pb import duration, pack

__all__ = ["AdmissionFeature", "admission_filter_name"]

_PREFIX = "waypost.admission."


def admission_filter_name(service: str) -> str:
    return f"{_PREFIX}{service}"


def _runtime_percent(value: float, key: str) -> base_pb2.RuntimePercent:
    return base_pb2.RuntimePercent(default_value=percent_pb2.Percent(value=value), runtime_key=key)


def _config(service: Service) -> ac_pb2.AdmissionControl:
    spec = service.admission_control
    assert spec is not None
    key = f"waypost.admission.{service.name}"
    return ac_pb2.AdmissionControl(
        enabled=base_pb2.RuntimeFeatureFlag(default_value={"value": True}, runtime_key=f"{key}.enabled"),
        # A 5xx (or a reset) is a failure; 4xx are the client's doing.
        success_criteria=ac_pb2.AdmissionControl.SuccessCriteria(
            http_criteria=ac_pb2.AdmissionControl.SuccessCriteria.HttpCriteria(
                http_success_status=[range_pb2.Int32Range(start=100, end=500)]
            )
        ),
        sampling_window=duration(spec.window),
        sr_threshold=_runtime_percent(spec.success_rate, f"{key}.sr_threshold"),
        rps_threshold=base_pb2.RuntimeUInt32(default_value=spec.min_rps, runtime_key=f"{key}.rps_threshold"),
        max_rejection_probability=_runtime_percent(spec.max_rejection, f"{key}.max_rejection"),
    )


class AdmissionFeature:
    """Not one filter but one per Service: :meth:`http_filters` returns them all."""

    filter_name = _PREFIX

    def __init__(self, policy: PolicySet | None = None) -> None:
        self.services: Mapping[str, Service] = policy.services if policy is not None else {}
        self._policy = policy
        # The Services asking for admission control (usually none: then nothing else is walked).
        self._asked = frozenset(name for name, s in self.services.items() if s.admission_control)
        self._by_gateway: dict[str, list[str]] | None = None

    def bind(self, policy: PolicySet) -> Self:
        return type(self)(policy)

    def _asking(self, routes: Sequence[Route]) -> list[Service]:
        if not self._asked:
            return []
        names = sorted({s for route in routes for s in route.services if s in self._asked})
        return [self.services[n] for n in names]

    def _gateway_asking(self, gateway: str) -> list[str]:
        """Per gateway, the Services asking for admission control that its routes send to
        (grouped on first use, in one pass over the routes)."""
        if self._by_gateway is None:
            by_gateway: dict[str, list[Route]] = {}
            if self._policy is not None and self._asked:
                for route in self._policy.routes.values():
                    by_gateway.setdefault(route.gateway, []).append(route)
            self._by_gateway = {name: [s.name for s in self._asking(rs)] for name, rs in by_gateway.items()}
        return self._by_gateway.get(gateway, [])

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        return bool(self._asking(routes))

    def http_filters(self, gateway: Gateway, routes: Sequence[Route]) -> list[hcm_pb2.HttpFilter]:
        return [
            hcm_pb2.HttpFilter(name=admission_filter_name(service.name), typed_config=pack(_config(service)))
            for service in self._asking(routes)
        ]

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        return self.http_filters(gateway, routes)[0]

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        off = pack(route_components_pb2.FilterConfig(disabled=True))
        for name in self._gateway_asking(route.gateway) if self._asked else ():
            if name not in route.services:
                xds_route.typed_per_filter_config[admission_filter_name(name)].CopyFrom(off)
