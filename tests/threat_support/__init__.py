"""Shared material of the threat-protection tests: the policy and the schema files it names."""

from __future__ import annotations

import shutil
from pathlib import Path

from authz_support import KEYS, key_hash

__all__ = ["write_policies"]

HERE = Path(__file__).parent


def write_policies(
    directory: Path, *, port: int, backend: str, ws_backend: str, screen_mode: str = "block"
) -> Path:
    (directory / "schemas").mkdir(parents=True, exist_ok=True)
    for name in ("item.json", "query.json", "pets.json"):
        shutil.copy(HERE / name, directory / "schemas" / name)
    (directory / "policy.yaml").write_text(
        f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: Service
name: ws
endpoints: ["{ws_backend}"]
---
kind: AuthPolicy
name: keys
identity: [{{api_key: {{header: x-api-key}}}}]
---
kind: Consumer
name: acme
api_keys: ["{key_hash(KEYS["acme"])}"]
---
kind: Route
name: orders-v1
gateway: public
match:
  prefix: /v1/orders
  methods: [GET, POST]
  headers: {{x-canary: "true"}}
backend: echo
cors: {{origins: ["https://app.example.com"], methods: [GET, POST], headers: [authorization, x-custom], max_age: 1h, credentials: true}}
---
kind: Route
name: items
gateway: public
match: {{path: /items, methods: [POST]}}
backend: echo
validation:
  json_schema: schemas/item.json
  query_schema: schemas/query.json
  headers: [x-request-id-client]
  max_body_bytes: 4096
---
kind: Route
name: pets
gateway: public
match: {{prefix: /pets}}
backend: echo
validation: {{openapi: schemas/pets.json}}
---
kind: Route
name: plain
gateway: public
match: {{prefix: /plain}}
backend: echo
---
kind: Route
name: screened
gateway: public
match: {{prefix: /screened}}
backend: echo
screen: {{mode: {screen_mode}, body: true, headers: [user-agent, referer, x-search]}}
---
kind: Route
name: chat
gateway: public
match: {{prefix: /chat}}
backend: ws
websocket: true
auth: keys
"""
    )
    return directory
