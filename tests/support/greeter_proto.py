"""The `helloworld.Greeter` gRPC API as a protobuf descriptor set, built in code (no protoc).

``descriptor_set()`` is what ``protoc --include_imports --descriptor_set_out`` would write for::

    package helloworld;
    message HelloRequest { string name = 1; }
    message HelloReply { string message = 1; }
    service Greeter { rpc SayHello (HelloRequest) returns (HelloReply); }
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

__all__ = ["descriptor_set", "message_class"]

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="helloworld.proto", package="helloworld", syntax="proto3")
    for name, field in (("HelloRequest", "name"), ("HelloReply", "message")):
        proto.message_type.add(name=name).field.add(
            name=field, number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name=field
        )
    proto.service.add(name="Greeter").method.add(
        name="SayHello", input_type=".helloworld.HelloRequest", output_type=".helloworld.HelloReply"
    )
    return proto


def descriptor_set() -> bytes:
    return descriptor_pb2.FileDescriptorSet(file=[_file()]).SerializeToString()


def message_class(name: str) -> type[message.Message]:
    """``message_class("HelloRequest")``: a class to parse and build that message."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"helloworld.{name}"))
