"""A proxyless gRPC client in a process of its own: grpcio's xDS resolver, fed by waypost.

Run as ``python -m support.grpc_xds_client TARGET`` with ``GRPC_XDS_BOOTSTRAP`` set (the xDS
client reads its bootstrap once per process, so each client needs its own process). It keeps one
channel to ``xds:///TARGET`` for its whole life, so a test sees changes arrive without a
reconnect, and answers commands on stdin, one JSON line each on stdout:

* ``ready``: one call that waits (up to 60 s) for the channel's first resources and endpoints,
  so a loaded machine's slow start is not counted as a failure of the calls measured after it.
* ``call N [KEY=VALUE ...]``: N calls of helloworld.Greeter/SayHello with that metadata; the reply
  is ``{"replies": {message: count}, "errors": {status: count}}``.
* ``flow``: start calling in a loop in the background (one call at a time) until ``stop``, which
  answers with the same counts for every call made meanwhile.
"""

from __future__ import annotations

import collections
import json
import sys
import threading

import grpc

from support.greeter_proto import message_class

HelloRequest, HelloReply = message_class("HelloRequest"), message_class("HelloReply")


class Counts:
    def __init__(self) -> None:
        self.replies: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def as_json(self) -> str:
        return json.dumps({"replies": dict(self.replies), "errors": dict(self.errors)})


def main(target: str) -> None:
    channel = grpc.insecure_channel(f"xds:///{target}")
    say_hello = channel.unary_unary(
        "/helloworld.Greeter/SayHello",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=HelloReply.FromString,  # type: ignore[attr-defined]
    )

    def call(counts: Counts, metadata: tuple[tuple[str, str], ...], *, ready: bool = False) -> None:
        try:
            reply = say_hello(
                HelloRequest(name="test"),  # type: ignore[call-arg]
                timeout=60 if ready else 5,
                metadata=metadata,
                wait_for_ready=ready,
            )
            counts.replies[reply.message] += 1
        except grpc.RpcError as exc:
            counts.errors[f"{exc.code().name}: {exc.details()}"] += 1

    flowing: Counts | None = None
    stop = threading.Event()
    worker: threading.Thread | None = None
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "ready":
            counts = Counts()
            call(counts, (), ready=True)
            print(counts.as_json(), flush=True)
        elif words[0] == "call":
            counts = Counts()
            metadata = tuple(tuple(w.split("=", 1)) for w in words[2:])
            for _ in range(int(words[1])):
                call(counts, metadata)  # type: ignore[arg-type]
            print(counts.as_json(), flush=True)
        elif words[0] == "flow":
            flowing, stop = Counts(), threading.Event()

            def loop(counts: Counts = flowing, done: threading.Event = stop) -> None:
                while not done.is_set():
                    call(counts, ())

            worker = threading.Thread(target=loop, daemon=True)
            worker.start()
            print("{}", flush=True)
        elif words[0] == "stop" and worker is not None and flowing is not None:
            stop.set()
            worker.join()
            print(flowing.as_json(), flush=True)
    channel.close()


if __name__ == "__main__":
    main(sys.argv[1])
