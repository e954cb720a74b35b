"""Validation as strict as Envoy (issue 12, item 8), checked against Envoy itself.

Differential: every regex and every certificate/key case here goes both to waypost's loader and
to ``envoy --mode validate`` (the Envoy that serves, with its default RE2 program-size limit); the
two must agree. What waypost refuses is a ``file:line`` error naming the field, never a NACK.
"""

from __future__ import annotations

import datetime
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from waypost.policies import PolicyError, load_policies
from waypost.policies.regexes import MAX_PROGRAM_SIZE, regex_problem
from waypost.xds.overload import LAYERED_RUNTIME

REGEXES_ENVOY_REFUSES = [
    "a{2000}",
    "a{1001}",
    "a" * 4093,  # program size 4097
    ".{1000}.{1000}.{100}",
    "(orders|payments|users){200}",
    "(?=x)y",
    "(?<!x)y",
    "(a)\\1",
    "a++",
    "(?x) a",
    "[z-a]",
    "a{2,1}",
    "\\",
    "(",
    "x\\Z",
]
REGEXES_ENVOY_ACCEPTS = [
    "a" * 4092,  # program size 4096: the limit of waypost's bootstraps
    ".{1000}.{1000}",
    "/v1/" + "(orders|payments|users)/" * 6,
    "/v1/[a-z]+/orders",
    "(?i)/v1/(?P<id>[0-9]+)$",
    "[[:alpha:]]+",
    "\\p{Greek}",
    "(?s).*",
    "/v1/(orders|payments)/[0-9]{1,6}",
    "a{2,5}",
    "[a-z]{30}",
    "(a|b|c|d|e|f|g|h|i|j|k|l|m|n|o|p){3}",
    "^/api/v[0-9]+/",
]


def _route_config(regexes: list[str]) -> dict[str, Any]:
    routes = [{"match": {"safe_regex": {"regex": r}}, "direct_response": {"status": 200}} for r in regexes]
    return _listener({"route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]}})


def _listener(hcm_extra: dict[str, Any], transport_socket: dict[str, Any] | None = None) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "x",
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        **hcm_extra,
    }
    if "route_config" not in hcm:
        hcm["route_config"] = {"virtual_hosts": []}
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [chain],
    }
    # The runtime of waypost's bootstraps (its RE2 program-size limit), as the fleet's Envoys run.
    return {"static_resources": {"listeners": [listener]}, "layered_runtime": LAYERED_RUNTIME}


def envoy_accepts(envoy_bin: Path, config: dict[str, Any], path: Path) -> tuple[bool, str]:
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(envoy_bin), "--mode", "validate", "-c", str(path), "-l", "critical", "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0, result.stdout + result.stderr


def test_regexes_waypost_refuses_are_the_ones_envoy_refuses(envoy_bin: Path, tmp_path: Path) -> None:
    for pattern in REGEXES_ENVOY_REFUSES:
        accepted, output = envoy_accepts(envoy_bin, _route_config([pattern]), tmp_path / "r.yaml")
        assert not accepted, (pattern, "Envoy accepts it: take it off the list")
        assert regex_problem(pattern) is not None, (pattern, output[-300:])
    accepted, output = envoy_accepts(envoy_bin, _route_config(REGEXES_ENVOY_ACCEPTS), tmp_path / "a.yaml")
    assert accepted, output[-500:]
    for pattern in REGEXES_ENVOY_ACCEPTS:
        assert regex_problem(pattern) is None, pattern
    assert regex_problem("a" * 4092) is None and MAX_PROGRAM_SIZE == 4096


def _generated_regexes(count: int, seed: int = 12) -> list[str]:
    """ASCII patterns from a small grammar: literals, classes, groups, alternations, repeats."""
    rng = random.Random(seed)

    def atom(depth: int) -> str:
        choice = rng.randrange(6 if depth < 3 else 3)
        if choice == 0:
            return rng.choice(["a", "/", "v1", "orders", "\\.", "-", "x"])
        if choice == 1:
            return rng.choice(["[a-z]", "[0-9]", "\\d", "\\w", ".", "[^/]"])
        if choice == 2:
            return rng.choice(["", "^", "$"]) + rng.choice(["a", "b"])
        inner = "".join(atom(depth + 1) for _ in range(rng.randint(1, 3)))
        if choice == 3:
            return f"({inner})"
        if choice == 4:
            return f"({inner}|{atom(depth + 1)})"
        return f"(?:{inner})"

    def piece() -> str:
        repeat = rng.choice(
            ["", "", "*", "+", "?", f"{{{rng.randint(1, 12)}}}", f"{{1,{rng.randint(2, 9)}}}"]
        )
        # Large counts too: the limit of waypost's bootstraps (4096) is far above Envoy's 100.
        return atom(0) + rng.choice([repeat, repeat, f"{{{rng.randint(50, 600)}}}"])

    return ["".join(piece() for _ in range(rng.randint(1, 10))) for _ in range(count)]


def test_generated_regexes_agree_with_envoy(envoy_bin: Path, tmp_path: Path) -> None:
    patterns = _generated_regexes(300)
    accepted = [p for p in patterns if regex_problem(p) is None]
    refused = [p for p in patterns if regex_problem(p) is not None]
    assert len(accepted) > 100 and len(refused) > 10, (len(accepted), len(refused))
    ok, output = envoy_accepts(envoy_bin, _route_config(accepted), tmp_path / "accepted.yaml")
    assert ok, output[-500:]
    for pattern in refused[:25]:
        ok, _ = envoy_accepts(envoy_bin, _route_config([pattern]), tmp_path / "refused.yaml")
        assert not ok, (pattern, regex_problem(pattern), "waypost refuses what Envoy takes")


def test_program_sizes_are_counted_as_envoy_counts_them(envoy_bin: Path, tmp_path: Path) -> None:
    """Envoy reports the size of a refused program: waypost's count must be the same number."""
    for pattern in [
        ".{1000}.{1000}.{100}",
        "\\w{1000}\\w{500}",
        "a" * 4093,
        "(a|b){1000}(c|d){400}",
        "(é){1000}(é){1000}(é){100}",
    ]:
        problem = regex_problem(pattern)
        ok, output = envoy_accepts(envoy_bin, _route_config([pattern]), tmp_path / "size.yaml")
        assert not ok and problem is not None, (pattern, problem)
        envoy_size = re.search(r"program size of (\d+)", output)
        assert envoy_size is not None and f"program size {envoy_size.group(1)} >" in problem, (
            pattern,
            problem,
        )
    for pattern in ["\\p{Greek}{500}", "\\pL{200}", "é{1000}", "[^/]{1000}"]:
        assert regex_problem(pattern) is None, pattern
        assert envoy_accepts(envoy_bin, _route_config([pattern]), tmp_path / "u.yaml")[0], pattern


POLICY = """kind: Gateway
name: edge
port: 18443
address: 127.0.0.1
deny:
  - paths: ["{deny_path}"]
    headers: {{x-probe: "{deny_header}"}}
---
kind: Service
name: echo
endpoints: ["127.0.0.1:9"]
---
kind: Route
name: r
gateway: edge
match: {{regex: "{match}"}}
backend: echo
deny:
  - paths: ["{route_deny}"]
"""


@pytest.mark.parametrize("field", ["match", "deny_path", "deny_header", "route_deny"])
@pytest.mark.parametrize("pattern", ["a{2000}", "a" * 4093, "(?=x)", ".{1000}.{1000}.{100}"])
def test_every_regex_field_is_checked_at_load_with_file_line(
    tmp_path: Path, field: str, pattern: str
) -> None:
    values = {"match": "/ok", "deny_path": "/ok", "deny_header": "ok", "route_deny": "/ok", field: pattern}
    (tmp_path / "p.yaml").write_text(POLICY.format(**{k: v.replace("\\", "\\\\") for k, v in values.items()}))
    with pytest.raises(PolicyError) as raised:
        load_policies(tmp_path)
    lines = {"match": 16, "deny_path": 6, "deny_header": 7, "route_deny": 19}
    messages = [str(d) for d in raised.value.diagnostics]
    assert len(messages) == 1 and messages[0].startswith(f"{tmp_path}/p.yaml:{lines[field]}: "), messages


# --- certificates and keys ------------------------------------------------------------------------


def _pair(tmp: Path) -> tuple[bytes, bytes, bytes]:
    """A self-signed certificate, its key, and another key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("edge.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, pkcs8, none),
        other.private_bytes(serialization.Encoding.PEM, pkcs8, none),
    )


def _junk_inside(pem: bytes) -> bytes:
    lines = pem.splitlines(keepends=True)
    return b"".join([*lines[:2], b"this is not base64!\n", *lines[2:]])


def _tls_cases(cert: bytes, key: bytes, other_key: bytes) -> dict[str, tuple[bytes, bytes, str | None]]:
    """name -> (cert file, key file, the field waypost must blame, or None when it is fine)."""
    encrypted = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    return {
        "good": (cert, key, None),
        "text around the blocks": (b"# edge cert\n" + cert + b"\n# end\n", key, None),
        "junk in the certificate": (_junk_inside(cert), key, "tls.cert"),
        "junk in the key": (cert, _junk_inside(key), "tls.key"),
        "truncated certificate": (cert[: len(cert) // 2], key, "tls.cert"),
        "certificate without END": (cert.replace(b"-----END CERTIFICATE-----", b""), key, "tls.cert"),
        "base64 of garbage": (
            b"-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
            key,
            "tls.cert",
        ),
        "encrypted key": (cert, encrypted, "tls.key"),
        "key of another certificate": (cert, other_key, "tls.key"),
        "certificate as key": (cert, cert, "tls.key"),
        "a bad second certificate": (cert + _junk_inside(cert), key, "tls.cert"),
    }


def test_certificates_and_keys_waypost_refuses_are_the_ones_envoy_refuses(
    envoy_bin: Path, tmp_path: Path
) -> None:
    cert, key, other_key = _pair(tmp_path)
    for index, (name, (cert_data, key_data, blamed)) in enumerate(_tls_cases(cert, key, other_key).items()):
        case = tmp_path / f"case{index}"
        (case / "certs").mkdir(parents=True)
        (case / "certs" / "edge.pem").write_bytes(cert_data)
        (case / "certs" / "edge-key.pem").write_bytes(key_data)
        (case / "gateway.yaml").write_text(
            "kind: Gateway\nname: edge\nport: 18443\naddress: 127.0.0.1\n"
            "tls:\n  cert: certs/edge.pem\n  key: certs/edge-key.pem\n"
        )
        tls = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(case / "certs" / "edge.pem")},
                            "private_key": {"filename": str(case / "certs" / "edge-key.pem")},
                        }
                    ]
                },
            },
        }
        envoy_ok, output = envoy_accepts(envoy_bin, _listener({}, tls), tmp_path / f"envoy{index}.yaml")
        try:
            load_policies(case)
            problems: list[str] = []
        except PolicyError as exc:
            problems = [str(d) for d in exc.diagnostics]
        assert envoy_ok == (blamed is None), (name, "Envoy disagrees with the case", output[-400:])
        if blamed is None:
            assert problems == [], (name, problems)
        else:
            line = {"tls.cert": 6, "tls.key": 7}[blamed]
            assert len(problems) == 1 and f"gateway.yaml:{line}: Gateway edge: {blamed}:" in problems[0], (
                name,
                problems,
            )
