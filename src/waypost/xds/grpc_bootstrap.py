"""The bootstrap file of a proxyless gRPC client (``GRPC_XDS_BOOTSTRAP``), pointing it at waypost.

gRPC's xDS client reads JSON (gRFC A27): the xDS server, the channel credentials to reach it, and
the node it announces. waypost serves such a node the GrpcTargets whose ``nodes`` select its
cluster and labels. TLS to waypost uses the file-based credentials of gRFC A65.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["render_grpc_bootstrap"]


def render_grpc_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    xds_host: str,
    xds_port: int,
    labels: Mapping[str, str] | None = None,
    xds_tls_ca: str | None = None,
    xds_client_cert: str | None = None,
    xds_client_key: str | None = None,
    register: tuple[str, str] | None = None,
) -> str:
    """The bootstrap JSON. Raises ValueError on an inconsistent set of TLS files."""
    if (xds_client_cert is None) != (xds_client_key is None):
        raise ValueError("--xds-client-cert and --xds-client-key go together")
    if xds_client_cert is not None and xds_tls_ca is None:
        raise ValueError("a client certificate needs --xds-tls-ca (mTLS runs over TLS)")
    creds: dict[str, Any] = {"type": "insecure"}
    if xds_tls_ca is not None:
        config = {"ca_certificate_file": xds_tls_ca}
        if xds_client_cert is not None and xds_client_key is not None:
            config |= {"certificate_file": xds_client_cert, "private_key_file": xds_client_key}
        creds = {"type": "tls", "config": config}
    host = f"[{xds_host}]" if ":" in xds_host and not xds_host.startswith("[") else xds_host
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": f"{host}:{xds_port}",
                "channel_creds": [creds],
                # xds_v3: speak xDS v3 (waypost serves nothing else).
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": node_id,
            "cluster": node_cluster,
            "metadata": {
                "labels": dict(labels or {}),
                **({"register": {"service": register[0], "address": register[1]}} if register else {}),
            },
            "locality": {},
        },
    }
    return json.dumps(bootstrap, indent=2) + "\n"
