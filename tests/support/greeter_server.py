"""A gRPC helloworld.Greeter server in a process of its own: ``python -m support.greeter_server REPLY``.

It prints its port on stdout and answers every SayHello with ``REPLY`` until stdin closes. Tests
that spawn other processes keep gRPC servers out of their own process: grpcio's threads and
epoll descriptors in a process that forks have aborted children under load.
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

from support.greeter_proto import message_class

HelloReply = message_class("HelloReply")


def main(reply: str) -> None:
    def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return HelloReply(message=reply).SerializeToString()  # type: ignore[no-any-return]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop(grace=None)


if __name__ == "__main__":
    main(sys.argv[1])
