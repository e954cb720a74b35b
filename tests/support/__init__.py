"""Test harness: free ports, real waypost/Envoy processes, waiting, and HTTP helpers.

Import from here in tests: ``from support import EnvoyProcess, free_port, get, wait_until``.
"""

from support.client import aget, arequest, async_http_client, get, http_client, request
from support.echo import EchoFactory, EchoRequest, EchoServer, start_echo
from support.ports import free_port, free_ports
from support.procs import (
    EXAMPLE_POLICIES,
    REPO_ROOT,
    EnvoyProcess,
    ManagedProcess,
    ProcessExited,
    StopWaiting,
    WaitTimeout,
    WaypostProcess,
    async_wait_until,
    wait_until,
)

__all__ = [
    "EXAMPLE_POLICIES",
    "REPO_ROOT",
    "EchoFactory",
    "EchoRequest",
    "EchoServer",
    "EnvoyProcess",
    "ManagedProcess",
    "ProcessExited",
    "StopWaiting",
    "WaitTimeout",
    "WaypostProcess",
    "aget",
    "arequest",
    "async_http_client",
    "async_wait_until",
    "free_port",
    "free_ports",
    "get",
    "http_client",
    "request",
    "start_echo",
    "wait_until",
]
