"""Incremental reload is a full rebuild, byte for byte: random edit sequences, both ways.

Each step edits a small policy directory (documents added, removed, changed, moved between files,
broken and fixed, files renamed), then loads it twice: with the caches a running server keeps
(:class:`LoadCache`, :class:`CompileMemo`, the snapshot encoder's previous version) and from
scratch. Both must give the same errors, or the same version and the same bytes for every
resource of every node group.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waypost.policies.diagnostics import PolicyError
from waypost.policies.load_cache import LoadCache
from waypost.policies.loader import load_policies
from waypost.xds.cache import NodeInfo, SnapshotCache
from waypost.xds.compiler import CompileMemo, compile_policy
from waypost.xds.types import TypeUrl


def gateway(name: str, port: int, extra: str = "") -> str:
    return f"kind: Gateway\nname: {name}\nport: {port}\nnodes: {{cluster: {name}}}\n{extra}"


def service(name: str, host: int, extra: str = "") -> str:
    return f"kind: Service\nname: {name}\nendpoints: ['10.0.0.{host}:8080', '10.0.1.{host}:8080']\n{extra}"


def route(name: str, gw: str, backend: str, extra: str = "") -> str:
    return (
        f"kind: Route\nname: {name}\ngateway: {gw}\nmatch: {{prefix: /{name}}}\nbackend: {backend}\n{extra}"
    )


BASE = {
    "gateways.yaml": [gateway("gw0", 10000), gateway("gw1", 10001, "auth_service: http\n")],
    "services.yaml": [service(f"svc{i}", i) for i in range(4)],
    "routes/a.yaml": [
        route("r0", "gw0", "svc0", "auth: keys\nrate_limit: per-consumer\n"),
        route("r1", "gw0", "svc1", "timeout: 5s\n"),
        route("r2", "gw1", "svc2", "auth: keys\n"),
    ],
    "routes/b.yaml": [route("r3", "gw1", "svc3", "rate_limit: per-ip\n"), route("r4", "gw0", "svc0")],
    "auth.yaml": [
        "kind: AuthPolicy\nname: keys\nidentity:\n  - api_key: {header: x-api-key}\n",
        "kind: Consumer\nname: acme\napi_keys: ['sha256:" + "a" * 64 + "']\n",
        "kind: RateLimitPolicy\nname: per-consumer\nlimits:\n  - {by: consumer, requests: 10, per: minute}\n",
        "kind: RateLimitPolicy\nname: per-ip\nlimits:\n  - {by: client_ip, requests: 5, per: second}\n",
    ],
}

# (what, file, index, payload): each edit is applied at an index taken modulo the file's length.
EDITS = st.one_of(
    st.tuples(
        st.just("add_route"),
        st.sampled_from(["routes/a.yaml", "routes/b.yaml"]),
        st.integers(0, 9),
        st.sampled_from(["gw0", "gw1"]),
        st.integers(0, 3),
        st.integers(0, 99),
    ),
    st.tuples(st.just("remove"), st.sampled_from(sorted(BASE)), st.integers(0, 9)),
    st.tuples(st.just("endpoint"), st.integers(0, 3), st.integers(1, 250)),
    st.tuples(
        st.just("lb"), st.integers(0, 3), st.sampled_from(["round_robin", "least_request", "ring_hash"])
    ),
    st.tuples(
        st.just("timeout"),
        st.sampled_from(["routes/a.yaml", "routes/b.yaml"]),
        st.integers(0, 9),
        st.integers(1, 60),
    ),
    st.tuples(st.just("auth_mode"), st.sampled_from(["enforce", "dry_run"])),
    st.tuples(st.just("plan"), st.sampled_from(["gold", "free", None])),
    st.tuples(st.just("break"), st.sampled_from(sorted(BASE)), st.sampled_from(["yaml", "field", "ref"])),
    st.tuples(
        st.just("fix"),
    ),
    st.tuples(st.just("move"), st.integers(0, 9)),
    st.tuples(st.just("blank_line"), st.sampled_from(sorted(BASE))),
)


class Tree:
    """The directory as lists of documents per file."""

    def __init__(self) -> None:
        self.files = {name: list(docs) for name, docs in BASE.items()}
        self.counter = 0
        self.broken: tuple[str, int] | None = None
        self.prefix: dict[str, str] = {}

    def write(self, root: Path) -> None:
        for path in root.rglob("*.yaml"):
            path.unlink()
        for name, docs in self.files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.prefix.get(name, "") + "".join(f"---\n{doc}" for doc in docs))

    def docs_of(self, kind: str) -> list[tuple[str, int]]:
        return [
            (f, i)
            for f, docs in self.files.items()
            for i, d in enumerate(docs)
            if d.startswith(f"kind: {kind}\n")
        ]

    def apply(self, edit: tuple[object, ...]) -> None:
        what = edit[0]
        if what == "add_route":
            _, file, index, gw, svc, n = edit
            self.counter += 1
            docs = self.files[str(file)]
            docs.insert(int(index) % (len(docs) + 1), route(f"n{self.counter}x{n}", str(gw), f"svc{svc}"))
        elif what == "remove":
            _, file, index = edit
            docs = self.files[str(file)]
            if docs:
                docs.pop(int(index) % len(docs))
        elif what == "endpoint":
            _, svc, host = edit
            self._replace("Service", f"name: svc{svc}\n", "10.0.1.", f"10.0.{2 + int(host) % 200}.")
        elif what == "lb":
            _, svc, lb = edit
            for f, i in self.docs_of("Service"):
                doc = self.files[f][i]
                if f"name: svc{svc}\n" in doc:
                    lines = [line for line in doc.splitlines(keepends=True) if not line.startswith("lb:")]
                    self.files[f][i] = "".join(lines) + f"lb: {lb}\n"
        elif what == "timeout":
            _, file, index, seconds = edit
            docs = self.files[str(file)]
            if docs:
                i = int(index) % len(docs)
                lines = [
                    line for line in docs[i].splitlines(keepends=True) if not line.startswith("timeout:")
                ]
                docs[i] = "".join(lines) + (
                    f"timeout: {seconds}s\n" if docs[i].startswith("kind: Route") else ""
                )
        elif what == "auth_mode":
            for f, i in self.docs_of("AuthPolicy"):
                doc = "".join(
                    x for x in self.files[f][i].splitlines(keepends=True) if not x.startswith("mode:")
                )
                self.files[f][i] = doc + f"mode: {edit[1]}\n"
        elif what == "plan":
            for f, i in self.docs_of("Consumer"):
                doc = "".join(
                    x for x in self.files[f][i].splitlines(keepends=True) if not x.startswith("plan:")
                )
                self.files[f][i] = doc + (f"plan: {edit[1]}\n" if edit[1] else "")
        elif what == "break":
            _, file, how = edit
            docs = self.files[str(file)]
            bad = {
                "yaml": "kind: Route\nname: [unclosed\n",
                "field": route("bad", "gw0", "svc0", "timeout: soon\n"),
                "ref": route("dangling", "gw0", "nope"),
            }[str(how)]
            docs.append(bad)
            self.broken = (str(file), len(docs) - 1)
        elif what == "fix":
            if self.broken is not None:
                file, index = self.broken
                if index < len(self.files[file]):
                    self.files[file].pop(index)
                self.broken = None
        elif what == "move":
            routes = self.docs_of("Route")
            if routes:
                f, i = routes[int(edit[1]) % len(routes)]
                doc = self.files[f].pop(i)
                other = "routes/b.yaml" if f == "routes/a.yaml" else "routes/a.yaml"
                self.files.setdefault(other, []).append(doc)
        elif what == "blank_line":
            file = str(edit[1])
            self.prefix[file] = self.prefix.get(file, "") + "# a comment\n"

    def _replace(self, kind: str, marker: str, old: str, new: str) -> None:
        for f, i in self.docs_of(kind):
            if marker in self.files[f][i]:
                self.files[f][i] = self.files[f][i].replace(old, new, 1)


NODES = [NodeInfo("a", "gw0"), NodeInfo("b", "gw1"), NodeInfo("c", "other")]


def full(root: Path) -> tuple[str, dict[object, object]] | list[str]:
    try:
        policy = load_policies(root)
    except PolicyError as exc:
        return [str(d) for d in exc.diagnostics]
    cache = SnapshotCache()
    for index, node in enumerate(NODES):
        cache.watch(index, node)
    cache.commit(cache.prepare(compile_policy(policy)))
    return policy.version, _dump(cache)


def _dump(cache: SnapshotCache) -> dict[object, object]:
    out: dict[object, object] = {}
    for node in NODES:
        snapshot = cache.snapshot_for(node)
        assert snapshot is not None
        for type_url in TypeUrl:
            out[(node.id, type_url, "version")] = snapshot.version(type_url)
            for name, resource in snapshot.resources[type_url].items():
                out[(node.id, type_url, name)] = resource.body
    return out


class Incremental:
    def __init__(self) -> None:
        self.load_cache = LoadCache()
        self.memo = CompileMemo()
        self.cache = SnapshotCache()
        for index, node in enumerate(NODES):
            self.cache.watch(index, node)

    def reload(self, root: Path) -> tuple[str, dict[object, object]] | list[str]:
        try:
            policy = load_policies(root, self.load_cache)
        except PolicyError as exc:
            return [str(d) for d in exc.diagnostics]
        self.cache.commit(self.cache.prepare(compile_policy(policy, memo=self.memo)))
        return policy.version, _dump(self.cache)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EDITS, min_size=1, max_size=8))
def test_incremental_reload_equals_full_rebuild(edits: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tree = Tree()
        tree.write(root)
        incremental = Incremental()
        assert incremental.reload(root) == full(root)
        for edit in edits:
            tree.apply(edit)
            tree.write(root)
            assert incremental.reload(root) == full(root), edit


def test_an_unchanged_document_is_not_parsed_or_compiled_again(tmp_path: Path) -> None:
    tree = Tree()
    tree.write(tmp_path)
    incremental = Incremental()
    incremental.reload(tmp_path)
    tree.apply(("add_route", "routes/a.yaml", 3, "gw1", 2, 7))  # at the end: no line moves
    tree.write(tmp_path)
    incremental.reload(tmp_path)
    assert incremental.load_cache.parsed_documents == 1
    # The new route is on gw1: gw0's resources and every cluster are reused.
    assert incremental.memo.built == [("gateway", "gw1")]
    node = NODES[1]  # gw1's Envoys, whose route r3 goes to svc3
    before = incremental.cache.snapshot_for(node)
    assert incremental.cache.compiled is not None
    clusters = dict(incremental.cache.compiled.clusters)
    tree.apply(("endpoint", 3, 9))
    tree.write(tmp_path)
    incremental.reload(tmp_path)
    assert incremental.load_cache.parsed_documents == 1
    assert incremental.memo.built == [("service", "svc3")]
    assert incremental.load_cache.patched  # the last set with svc3 swapped in, no full pass
    # Its EDS cluster does not carry the endpoints: the very same cluster object is kept.
    assert incremental.cache.compiled is not None
    assert all(incremental.cache.compiled.clusters[name] is c for name, c in clusters.items())
    # An endpoint-only change: only the EDS version moves, so only EDS is pushed.
    after = incremental.cache.snapshot_for(node)
    assert before is not None and after is not None
    moved = {t for t in TypeUrl if before.version(t) != after.version(t)}
    assert moved == {TypeUrl.ENDPOINT}


GRPC_POLICY = """\
kind: Gateway
name: edge
port: 8080
---
kind: Service
name: greeter
protocol: grpc
endpoints: ["10.0.0.7:50051"]
---
kind: GrpcTarget
name: greet
target: greeter.example:50051
routes:
  - backend: greeter
"""


def test_an_endpoint_change_others_read_takes_the_full_load(tmp_path: Path) -> None:
    """Only endpoint moves nothing else reads skip the cross-document checks: a GrpcTarget reads
    its Services' endpoints (IPs only), so a DNS name there fails as in a full load; a referenced
    file that changed with the endpoints is read; a broken document is reported."""
    cache = LoadCache()
    (tmp_path / "policy.yaml").write_text(GRPC_POLICY)
    load_policies(tmp_path, cache)
    (tmp_path / "policy.yaml").write_text(GRPC_POLICY.replace("10.0.0.7:50051", "greeter.internal:50051"))
    with pytest.raises(PolicyError) as cached:
        load_policies(tmp_path, cache)
    with pytest.raises(PolicyError) as full:
        load_policies(tmp_path)
    assert str(cached.value) == str(full.value)
    assert "gRPC clients take IP endpoints only" in str(cached.value)

    # Without GrpcTargets the change is patched in: the same set as a full load.
    plain = GRPC_POLICY.split("---\nkind: GrpcTarget")[0]
    (tmp_path / "policy.yaml").write_text(plain)
    load_policies(tmp_path, cache)
    (tmp_path / "policy.yaml").write_text(plain.replace("10.0.0.7", "10.0.0.8"))
    patched = load_policies(tmp_path, cache)
    assert cache.patched
    assert patched == load_policies(tmp_path)
    # A bad address is the document's own error, reported as without the cache.
    (tmp_path / "policy.yaml").write_text(plain.replace("10.0.0.7:50051", "10.0.0.7:99999"))
    with pytest.raises(PolicyError) as cached:
        load_policies(tmp_path, cache)
    with pytest.raises(PolicyError) as full:
        load_policies(tmp_path)
    assert str(cached.value) == str(full.value)
    assert not cache.patched
