"""The files policy documents name: certificates and keys, JWKS, gRPC descriptors, OpenAPI
documents and request schemas.

:func:`read_referenced_files` reads each through the load's
:class:`~waypost.policies.source.PolicySource` (relative paths only, never outside the policy
directory, each capped in size), checks it as Envoy or the decision services will parse it (PEM,
a key that matches its certificate, a descriptor set holding the transcoded services, a schema
that compiles) and reports each problem at the line of the field naming the file. The only I/O is
through the source; files are read once per load however many documents name them.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from waypost.policies.diagnostics import Diagnostic
from waypost.policies.document_errors import at_field
from waypost.policies.model import Api, AuthPolicy, Document, Gateway, Route, Service
from waypost.policies.pem import certificate_problem, key_mismatch_problem, private_key_problem
from waypost.policies.request_schemas import SchemaProblem, compile_validation
from waypost.policies.source import MAX_REFERENCED_FILE_BYTES, PolicySource, SourceError
from waypost.policies.types import PrivateBytes
from waypost.policies.validate import Entry, Loc, per_entry

__all__ = ["FileRef", "read_referenced_files", "validation_problem", "validation_refs"]


@dataclass(frozen=True, slots=True)
class FileRef:
    loc: Loc
    value: str
    what: str  # "certificate", "private key", "jwks", "descriptor", "openapi" or "schema"


_VALIDATION_FILES = ("json_schema", "openapi", "query_schema")


def validation_refs(route: Route) -> Iterator[FileRef]:
    if route.validation is not None:
        for key in _VALIDATION_FILES:
            value = getattr(route.validation, key)
            if value is not None:
                yield FileRef(("validation", key), value, "schema")


def validation_problem(route: Route, files: Mapping[str, bytes]) -> tuple[Loc, str] | None:
    """A validation file that does not compile, at the field naming it; compiled once (cached)."""
    if route.validation is None:
        return None
    try:
        compile_validation(route.validation, files)
    except SchemaProblem as exc:
        key = next(
            (k for k in _VALIDATION_FILES if str(exc).startswith(f"'{getattr(route.validation, k)}'")),
            "openapi" if route.validation.openapi is not None else "json_schema",
        )
        return ("validation", key), str(exc)
    return None


def _entry_file_refs(entry: Entry) -> tuple[FileRef, ...]:
    return tuple(_file_refs(entry.document)) if entry.document is not None else ()


def _file_refs(document: Document) -> Iterator[FileRef]:
    if isinstance(document, Gateway) and document.tls is not None:
        yield FileRef(("tls", "cert"), document.tls.cert, "certificate")
        yield FileRef(("tls", "key"), document.tls.key, "private key")
        if document.tls.client_ca is not None:
            yield FileRef(("tls", "client_ca"), document.tls.client_ca, "certificate")
    elif isinstance(document, Service) and document.tls is not None:
        yield FileRef(("tls", "ca"), document.tls.ca, "certificate")
        if document.tls.cert is not None and document.tls.key is not None:
            yield FileRef(("tls", "cert"), document.tls.cert, "certificate")
            yield FileRef(("tls", "key"), document.tls.key, "private key")
    elif isinstance(document, Route):
        if document.grpc_json is not None:
            yield FileRef(("grpc_json", "descriptor"), document.grpc_json.descriptor, "descriptor")
        yield from validation_refs(document)
    elif isinstance(document, Api) and document.openapi is not None:
        yield FileRef(("openapi",), document.openapi, "openapi")
    elif isinstance(document, AuthPolicy):
        for index, source in enumerate(document.identity):
            if source.jwt is not None:
                yield FileRef(("identity", index, "jwt", "jwks"), source.jwt.jwks, "jwks")


def _content_problem(what: str, shown: str, data: bytes) -> str | None:
    if what == "jwks":
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            parsed = None
        if not (isinstance(parsed, dict) and isinstance(parsed.get("keys"), list)):
            return f"{shown} is not a JWKS file: expected a JSON object with a 'keys' list"
        return None
    if what == "descriptor":
        return _descriptor_problem(shown, data)
    if what == "openapi":
        return _openapi_problem(shown, data)
    if what == "schema":
        return None  # parsed and compiled with the rest of the route's validation
    # Parsed as Envoy will parse them, so junk between PEM markers is a file:line error here.
    return private_key_problem(shown, data) if what == "private key" else certificate_problem(shown, data)


def _descriptor_problem(shown: str, data: bytes) -> str | None:
    descriptors = descriptor_pb2.FileDescriptorSet()
    try:
        descriptors.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError):
        descriptors.Clear()
    if not descriptors.file:
        return f"{shown} is not a protobuf descriptor set (protoc --include_imports --descriptor_set_out)"
    return None


def _openapi_problem(shown: str, data: bytes) -> str | None:
    # JSON is YAML 1.2, so one parser reads both forms; the portal renders what is found.
    try:
        parsed = yaml.safe_load(data)
    except (yaml.YAMLError, RecursionError):
        parsed = None
    if not (isinstance(parsed, dict) and ("openapi" in parsed or "swagger" in parsed)):
        return f"{shown} is not an OpenAPI document: expected a mapping with an 'openapi' key"
    return None


def _missing_grpc_services(route: Route, data: bytes) -> list[str]:
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(data)
    defined = {
        f"{file.package}.{service.name}" if file.package else service.name
        for file in descriptors.file
        for service in file.service
    }
    return [name for name in (route.grpc_json.services if route.grpc_json else ()) if name not in defined]


class _Reader:
    """One pass over the entries' file references, collecting diagnostics as it goes."""

    def __init__(self, source: PolicySource, inputs: dict[str, bytes], files: dict[str, bytes]) -> None:
        self.source = source
        self.inputs = inputs
        self.files = files
        self.diagnostics: list[Diagnostic] = []

    def fail(self, path: str, line: int, message: str, kind: str = "", name: str = "") -> None:
        self.diagnostics.append(Diagnostic(path, line, kind, name, message))

    def read_all(self, entries: list[Entry]) -> None:
        cache: dict[str, bytes | str] = {}  # normalized relative path -> bytes, or why not
        for entry in entries:
            document = entry.document
            if document is None:
                continue
            refs = per_entry(entry, "file refs", _entry_file_refs)
            if not refs and not (isinstance(document, Route) and document.validation is not None):
                continue  # most documents: nothing to read or compile
            failed = False
            for ref in refs:
                problem = self.read_reference(ref, cache)
                if problem is not None:
                    failed = True
                    line = entry.source.line_of(ref.loc)
                    self.fail(entry.source.path, line, at_field(ref.loc, problem), entry.kind, entry.name)
                elif ref.what == "private key":
                    self.check_key_pair(entry, ref)
                elif ref.what == "descriptor" and isinstance(entry.document, Route):
                    # Envoy refuses a transcoder naming a service its descriptor lacks.
                    missing = _missing_grpc_services(entry.document, self.files[ref.value])
                    if missing:
                        loc = ("grpc_json", "services")
                        message = f"{', '.join(missing)} not in '{ref.value}'"
                        line = entry.source.line_of(loc)
                        self.fail(entry.source.path, line, at_field(loc, message), entry.kind, entry.name)
            if not failed and isinstance(entry.document, Route) and entry.document.validation is not None:
                schema_problem = validation_problem(entry.document, self.files)
                if schema_problem is not None:
                    schema_loc, message = schema_problem
                    line = entry.source.line_of(schema_loc)
                    self.fail(entry.source.path, line, at_field(schema_loc, message), entry.kind, entry.name)

    def check_key_pair(self, entry: Entry, key_ref: FileRef) -> None:
        """Envoy refuses a key that is not its certificate's; `_file_refs` yields the cert first."""
        tls = getattr(entry.document, "tls", None)
        cert = self.files.get(getattr(tls, "cert", None) or "")
        key = self.files.get(key_ref.value)
        if cert is None or key is None:
            return
        problem = key_mismatch_problem(f"'{key_ref.value}'", bytes(cert), bytes(key))
        if problem is not None:
            line = entry.source.line_of(key_ref.loc)
            self.fail(entry.source.path, line, at_field(key_ref.loc, problem), entry.kind, entry.name)

    def read_reference(self, ref: FileRef, cache: dict[str, bytes | str]) -> str | None:
        shown = f"'{ref.value}'"
        if ref.what == "jwks" and "://" in ref.value:
            parts = urlsplit(ref.value)
            if parts.scheme != "https" or not parts.netloc:
                return f"{shown} must be an https:// URL or a file in the policy directory"
            return None
        if not ref.value or ref.value.startswith(("/", "\\")) or os.path.isabs(ref.value):
            return f"{shown} must be a path relative to the policy directory"
        normal = posixpath.normpath(ref.value.replace("\\", "/"))
        if normal == ".." or normal.startswith("../"):
            return f"{shown} is outside the policy directory"
        if normal not in cache:
            try:
                cache[normal] = self.source.read(normal, limit=MAX_REFERENCED_FILE_BYTES)
            except SourceError as exc:
                cache[normal] = str(exc)
        data = cache[normal]
        if isinstance(data, str):
            return data
        problem = _content_problem(ref.what, shown, data)
        if problem is None:
            self.inputs[normal] = data
            # One file used as both certificate and key stays redacted.
            secret = ref.what == "private key" or isinstance(self.files.get(ref.value), PrivateBytes)
            self.files[ref.value] = PrivateBytes(data) if secret else data
        return problem


def read_referenced_files(
    source: PolicySource, entries: list[Entry], *, inputs: dict[str, bytes], files: dict[str, bytes]
) -> list[Diagnostic]:
    """Read and check every file the valid ``entries`` name; return the problems, in entry order.

    Each file read and found sound is added to ``files`` (by the path as written; private keys as
    :class:`~waypost.policies.types.PrivateBytes`) and to ``inputs`` (by normalized path, for the
    version hash): both are the caller's, updated in place.
    """
    reader = _Reader(source, inputs, files)
    reader.read_all(entries)
    return reader.diagnostics
