"""Gateway.compression / Route.compression -> Envoy's compressor filter, one per algorithm.

Each algorithm is its own filter instance; Envoy's compressor filters negotiate among themselves,
so a client is answered in the encoding it prefers (by accept-encoding q-value) of those enabled.
Minimum size and content types are per filter instance, so they live on the Gateway; a Route can
only switch compression on (``true``, using the Gateway's settings or the gzip defaults) or off.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.compression.brotli.compressor.v3 import brotli_pb2
from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2
from envoy.extensions.compression.zstd.compressor.v3 import zstd_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import message, wrappers_pb2

from waypost.policies.model import Compression, CompressionAlgorithm, Gateway, Route
from waypost.xds.compiler.pb import pack

__all__ = ["CompressionFeature"]

_GZIP = gzip_pb2.Gzip
# Per level: gzip level, brotli quality (0-11), zstd level (1-22). "fastest" is what nginx
# defaults to for gzip (level 1): on small API responses higher levels cost CPU for little gain.
_LEVELS = {
    "fastest": (_GZIP.BEST_SPEED, 1, 1),
    "balanced": (_GZIP.DEFAULT_COMPRESSION, 5, 3),
    "smallest": (_GZIP.BEST_COMPRESSION, 11, 19),
}


def _library(algorithm: str, level: str) -> tuple[str, message.Message]:
    gzip_level, brotli_quality, zstd_level = _LEVELS[level]
    if algorithm == "gzip":
        return "envoy.compression.gzip.compressor", gzip_pb2.Gzip(compression_level=gzip_level)
    if algorithm == "brotli":
        return "envoy.compression.brotli.compressor", brotli_pb2.Brotli(
            quality=wrappers_pb2.UInt32Value(value=brotli_quality)
        )
    return "envoy.compression.zstd.compressor", zstd_pb2.Zstd(
        compression_level=wrappers_pb2.UInt32Value(value=zstd_level)
    )


_DEFAULT = Compression()


class CompressionFeature:
    """One compressor filter for one algorithm."""

    def __init__(self, algorithm: CompressionAlgorithm) -> None:
        self.algorithm = algorithm
        self.filter_name = f"envoy.filters.http.compressor.{algorithm}"

    def _settings(self, gateway: Gateway) -> Compression:
        return gateway.compression or _DEFAULT

    def applies(self, gateway: Gateway, routes: Sequence[Route]) -> bool:
        if gateway.compression is not None:
            return self.algorithm in gateway.compression.algorithms
        return self.algorithm in _DEFAULT.algorithms and any(r.compression for r in routes)

    def http_filter(self, gateway: Gateway, routes: Sequence[Route]) -> hcm_pb2.HttpFilter:
        settings = self._settings(gateway)
        library_name, library = _library(self.algorithm, settings.level)
        config = compressor_pb2.Compressor(
            compressor_library=extension_pb2.TypedExtensionConfig(
                name=library_name, typed_config=pack(library)
            ),
            response_direction_config=compressor_pb2.Compressor.ResponseDirectionConfig(
                common_config=compressor_pb2.Compressor.CommonDirectionConfig(
                    min_content_length=wrappers_pb2.UInt32Value(value=settings.min_bytes),
                    content_type=list(settings.content_types),
                ),
            ),
        )
        # Without Gateway settings only routes saying `compression: true` compress: the filter is
        # off by default and a route's per-filter config switches it on.
        return hcm_pb2.HttpFilter(
            name=self.filter_name, typed_config=pack(config), disabled=gateway.compression is None
        )

    def patch_route(self, route: Route, xds_route: route_components_pb2.Route) -> None:
        if route.compression is None:
            return
        per_route = (
            # Any valid per-route config switches on a filter that is off by default.
            compressor_pb2.CompressorPerRoute(
                overrides=compressor_pb2.CompressorOverrides(
                    response_direction_config=compressor_pb2.ResponseDirectionOverrides()
                )
            )
            if route.compression
            else compressor_pb2.CompressorPerRoute(disabled=True)
        )
        xds_route.typed_per_filter_config[self.filter_name].CopyFrom(pack(per_route))
