"""Sidecars expanded into the kinds the compiler and the decision services already know.

A Sidecar is shorthand: waypost writes, for each one, the documents a platform engineer would
otherwise write by hand, so auth, rate limits and every other Route feature apply to east-west
traffic exactly as they do at the edge:

* inbound: Gateway ``<name>.inbound`` (the port, TLS with client certificates from the mesh CA,
  on the Sidecar's nodes), Service ``<name>.app`` (the local app) and Route ``<name>.inbound``
  (everything to the app, with the inbound ``auth``, ``rate_limit`` and ``timeout``);
* per outbound service S: Gateway ``<name>.out.S`` (127.0.0.1:port, on the Sidecar's nodes), Route
  ``<name>.out.S`` and Service ``<name>.to.S``, whose endpoints are the registered instances of
  Sidecar S (``registration.service: S``, S's nodes and grace), reached over TLS with this
  Sidecar's certificate, verifying the peer's against the mesh CA and the name S.

Pure: documents in, documents out. Problems (a name too long, a callee that is not a Sidecar) are
returned as (field path, message) for the loader to place at the Sidecar's lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from waypost.policies.model import Document, Gateway, Route, Service, Sidecar
from waypost.policies.types import format_duration

__all__ = ["Expansion", "expand_sidecar"]

Loc = tuple[str | int, ...]
MAX_NAME = 63
"""The longest policy name (types.NAME_PATTERN): generated names must fit it too."""


@dataclass(frozen=True)
class Expansion:
    documents: tuple[Document, ...]
    problems: tuple[tuple[Loc, str], ...]


def expand_sidecar(sidecar: Sidecar, sidecars: Mapping[str, Sidecar]) -> Expansion:
    documents: list[Document] = []
    problems: list[tuple[Loc, str]] = []

    def add(loc: Loc, model: type[Document], written: dict[str, Any]) -> None:
        # Validated as if the user had written it: a generated name too long is an error here.
        try:
            documents.append(model.model_validate(written))
        except ValidationError as exc:
            detail = "; ".join(error["msg"] for error in exc.errors(include_url=False))
            problems.append((loc, f"cannot expand into {model.__name__} {written['name']}: {detail}"))

    name, tls, inbound = sidecar.name, sidecar.tls, sidecar.inbound
    generated = [f"{name}.inbound"] if inbound is not None else []
    generated += [f"{name}.out.{o.service}" for o in sidecar.outbound]
    longest = max(generated, key=len, default="")
    if len(longest) > MAX_NAME:
        message = (
            f"too long for the names it expands into ({longest}: {len(longest)} > {MAX_NAME} characters)"
        )
        return Expansion((), ((("name",), message),))
    nodes = sidecar.nodes.model_dump()
    if inbound is not None:
        add(("inbound", "port"), Gateway, {
            "name": f"{name}.inbound", "port": inbound.port, "nodes": nodes,
            "tls": {"cert": tls.cert, "key": tls.key, "client_ca": tls.ca},
        })  # fmt: skip
        add(("inbound", "app"), Service, {"name": f"{name}.app", "endpoints": [str(inbound.app)]})
        add(("inbound",), Route, {
            "name": f"{name}.inbound", "gateway": f"{name}.inbound", "match": {"prefix": "/"},
            "backend": f"{name}.app", "auth": inbound.auth, "rate_limit": inbound.rate_limit,
            **_timeout(inbound.timeout),
        })  # fmt: skip
    for index, outbound in enumerate(sidecar.outbound):
        loc: Loc = ("outbound", index, "service")
        callee = sidecars.get(outbound.service)
        if callee is None:
            problems.append((loc, f"'{outbound.service}' is not a Sidecar"))
            continue
        if callee.inbound is None:
            problems.append((loc, f"Sidecar {outbound.service} has no inbound: nothing can call it"))
            continue
        gateway, service = f"{name}.out.{outbound.service}", f"{name}.to.{outbound.service}"
        add(loc, Gateway, {"name": gateway, "address": "127.0.0.1", "port": outbound.port, "nodes": nodes})
        add(loc, Service, {
            "name": service,
            "registration": {
                "nodes": callee.nodes.model_dump(), "grace": format_duration(callee.grace),
                "service": outbound.service,
            },
            "tls": {"ca": tls.ca, "sni": outbound.service, "cert": tls.cert, "key": tls.key},
        })  # fmt: skip
        add(loc, Route, {
            "name": gateway, "gateway": gateway, "match": {"prefix": "/"}, "backend": service,
            **_timeout(outbound.timeout),
        })  # fmt: skip
    return Expansion(tuple(documents), tuple(problems))


def _timeout(millis: int | None) -> dict[str, str]:
    # The model holds durations as milliseconds but takes them as text, as users write them.
    return {} if millis is None else {"timeout": format_duration(millis)}
