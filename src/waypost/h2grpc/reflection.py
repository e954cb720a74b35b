"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``), so ``grpcurl`` can list and describe.

A bidi stream: each ServerReflectionRequest gets one response, answered from the process's
protobuf descriptor pool (every served service's module is imported by its service, so its file
is there): ``list_services``, ``file_containing_symbol``, ``file_by_filename`` (a file with its
transitive dependencies), ``file_containing_extension`` and ``all_extension_numbers_of_type``.
What the pool does not hold is the in-band error NOT_FOUND, as the protocol asks. v1 and v1alpha
messages are the same on the wire; the v1alpha classes (grpcio-reflection) serve both, and the v1
file is registered in the pool under its own package so that it too can be described.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2 as pb

from waypost.h2grpc.api import GrpcError, Send, Service, Status, StreamMethod

__all__ = ["REFLECTION_SERVICES", "Reflection"]

REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")


def _register_v1() -> None:
    """Add grpc/reflection/v1/reflection.proto to the pool: v1alpha's file under the v1 package."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())


class Reflection:
    def __init__(self, service_names: Callable[[], Sequence[str]]) -> None:
        self._names = service_names
        self._pool = descriptor_pool.Default()
        _register_v1()

    def services(self) -> list[Service]:
        method = {"ServerReflectionInfo": StreamMethod(self._info)}
        return [Service(name, method) for name in REFLECTION_SERVICES]

    async def _info(self, requests: AsyncIterator[bytes], send: Send) -> None:
        async for body in requests:
            try:
                request = pb.ServerReflectionRequest.FromString(body)
            except DecodeError as exc:
                raise GrpcError(Status.INVALID_ARGUMENT, "malformed ServerReflectionRequest") from exc
            await send(self.answer(request).SerializeToString())

    def answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        response = pb.ServerReflectionResponse(valid_host=request.host, original_request=request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                names = sorted(self._names())
                response.list_services_response.service.extend(pb.ServiceResponse(name=n) for n in names)
            elif kind == "file_by_filename":
                self._files(response, self._pool.FindFileByName(request.file_by_filename))
            elif kind == "file_containing_symbol":
                symbol = request.file_containing_symbol
                self._files(response, self._pool.FindFileContainingSymbol(symbol))
            elif kind == "file_containing_extension":
                wanted = request.file_containing_extension
                base = self._pool.FindMessageTypeByName(wanted.containing_type)
                extension = self._pool.FindExtensionByNumber(base, wanted.extension_number)
                self._files(response, extension.file)
            elif kind == "all_extension_numbers_of_type":
                base = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = response.all_extension_numbers_response
                numbers.base_type_name = base.full_name
                numbers.extension_number.extend(sorted(e.number for e in self._pool.FindAllExtensions(base)))
            else:
                response.error_response.error_code = Status.INVALID_ARGUMENT
                response.error_response.error_message = "no request"
        except KeyError:
            response.ClearField("message_response")
            response.error_response.error_code = Status.NOT_FOUND
            response.error_response.error_message = "not found"
        return response

    def _files(self, response: pb.ServerReflectionResponse, file: descriptor.FileDescriptor) -> None:
        """``file`` and every file it depends on, transitively, each once."""
        seen: dict[str, descriptor.FileDescriptor] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name in seen:
                continue
            seen[current.name] = current
            pending.extend(current.dependencies)
        for current in seen.values():
            proto = descriptor_pb2.FileDescriptorProto()
            current.CopyToProto(proto)
            response.file_descriptor_response.file_descriptor_proto.append(proto.SerializeToString())
