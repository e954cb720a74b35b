"""Request header blocks, decoded with ``hpack``, and reused while the HPACK table allows.

Once its fields are in the dynamic table, Envoy sends the same header-block bytes for every call;
pure-Python HPACK decoding was most of a call's CPU. A block whose decoding left the table as it
was decodes to the same fields for as long as the table stays the same, so it is decoded once per
table state (the table counts its changes). Oversized lists and bad blocks are connection errors.
"""

from __future__ import annotations

import hpack
from hpack.table import HeaderTable

from waypost.h2grpc import frames as f
from waypost.h2grpc.frames import ProtocolFault

__all__ = ["HeaderDecoder"]

_CACHED = 64


class _CountingTable(HeaderTable):
    """The HPACK dynamic table, counting additions (size changes show in ``maxsize``)."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)


class HeaderDecoder:
    """One per connection (HPACK state is per connection)."""

    def __init__(self, max_header_list: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list)
        self._table = self._decoder.header_table = _CountingTable()
        self._decoded: dict[bytes, tuple[tuple[int, int], dict[bytes, bytes]]] = {}

    def decode(self, block: bytes) -> dict[bytes, bytes]:
        table = self._table
        state = (table.generation, table.maxsize)
        cached = self._decoded.get(block)
        if cached is not None and cached[0] == state:
            return cached[1]
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError as exc:
            raise ProtocolFault(f.ErrorCode.ENHANCE_YOUR_CALM, "header list too large") from exc
        except hpack.HPACKError as exc:
            raise ProtocolFault(f.ErrorCode.COMPRESSION_ERROR, "bad header block") from exc
        fields = {bytes(name): bytes(value) for name, value in headers}
        if (table.generation, table.maxsize) == state:
            if len(self._decoded) >= _CACHED:
                self._decoded.clear()
            self._decoded[block] = (state, fields)
        return fields
