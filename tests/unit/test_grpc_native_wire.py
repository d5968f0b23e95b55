"""The native gRPC transport's wire pieces: status trailers as HPACK decodes them, grpc-message's
percent-encoding, request headers (deadline, metadata, binary metadata), response compression choice."""

from __future__ import annotations

import grpc
from hpack import Decoder, Encoder

from tritium.frontends.grpc.native import frames as F
from tritium.frontends.grpc.native.config import NativeConfig
from tritium.frontends.grpc.native.connection import RESPONSE_HEADERS, TRAILERS_OK, Head, percent_encode, status_block


def test_response_header_blocks_decode_and_leave_the_table_empty() -> None:
    decoder = Decoder()
    assert decoder.decode(RESPONSE_HEADERS[None]) == [(":status", "200"), ("content-type", "application/grpc")]
    assert decoder.decode(RESPONSE_HEADERS["gzip"])[-1] == ("grpc-encoding", "gzip")
    assert decoder.decode(TRAILERS_OK) == [("grpc-status", "0")]
    assert not decoder.header_table.dynamic_entries  # nothing indexed: blocks may be sent in any order


def test_status_block_with_message_and_trailing_metadata() -> None:
    block = status_block(grpc.StatusCode.NOT_FOUND.value[0], "model 'x' 100% gone\nbye ü",
                         [("Key", "v"), ("k-bin", b"\x00\xff")])
    headers = dict(Decoder().decode(block))
    assert headers["grpc-status"] == "5"
    assert headers["grpc-message"] == "model 'x' 100%25 gone%0Abye %C3%BC"
    assert headers["key"] == "v" and headers["k-bin"] == "AP8"


def test_percent_encoding_keeps_printable_ascii() -> None:
    text = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
    assert percent_encode(text) == text.encode()
    assert percent_encode("%\t") == b"%25%09"


def test_request_head() -> None:
    block = Encoder().encode([(":method", "POST"), (":path", "/s/M"), ("content-type", "application/grpc+proto"),
                              ("te", "trailers"), ("grpc-timeout", "1500m"), ("grpc-encoding", "gzip"),
                              ("x-user", "a"), ("x-data-bin", "AP8"), ("grpc-accept-encoding", "gzip")])
    head = Head(Decoder().decode(block))
    assert head.valid and head.path == "/s/M" and head.timeout == 1.5 and head.encoding == "gzip"
    assert head.metadata == (("x-user", "a"), ("x-data-bin", b"\x00\xff"))
    assert not Head([(":method", "GET"), (":path", "/s/M"), ("content-type", "application/grpc")]).valid
    assert not Head([(":method", "POST"), (":path", "/s/M"), ("content-type", "text/plain")]).valid
    assert Head([("grpc-timeout", "123456789S")]).timeout is None  # more than 8 digits: ignored
    assert Head([("grpc-timeout", "5x")]).timeout is None


def test_response_compression_follows_grpc_levels() -> None:
    accept = "identity,deflate,gzip"
    assert NativeConfig(compression=None).choose_compression(accept) is None
    assert NativeConfig(compression="low").choose_compression(accept) == "gzip"
    assert NativeConfig(compression="medium").choose_compression(accept) == "deflate"
    assert NativeConfig(compression="high").choose_compression(accept) == "deflate"
    assert NativeConfig(compression="high").choose_compression("identity,gzip") == "gzip"
    assert NativeConfig(compression="low").choose_compression("identity") is None


def test_frames() -> None:
    data = F.frame(F.DATA, F.END_STREAM, 3, b"abc")
    hi, lo, kind, flags, sid = F.HEADER.unpack_from(data)
    assert ((hi << 8) | lo, kind, flags, sid, data[9:]) == (3, F.DATA, F.END_STREAM, 3, b"abc")
    big = F.frame_header(F.DATA, 0, 1, 1 << 20)
    assert int.from_bytes(big[:3], "big") == 1 << 20
    assert F.parse_settings(F.settings({F.SETTINGS_MAX_FRAME_SIZE: 1 << 20})[9:]) == [(5, 1 << 20)]


def test_finished_calls_leave_no_cycles_for_the_collector() -> None:
    """A call's stream and its context reference each other while the call runs; once it ends, reference
    counting frees both (the cycle collector's pauses were the p99 of busy servers)."""
    import asyncio
    import gc

    from tritium.frontends.grpc.native.connection import Stream
    from tritium.frontends.grpc.native.context import NativeContext
    from tritium.frontends.grpc.native.server import NativeServer

    async def echo(request: bytes, context: NativeContext) -> bytes:
        assert not context.cancelled() and context.time_remaining() is not None
        return request

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for item in requests:
            yield item

    handler = grpc.method_handlers_generic_handler("t.S", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Chat": grpc.stream_stream_rpc_method_handler(stream),
    })

    def alive() -> int:
        return sum(type(o) in (Stream, NativeContext) for o in gc.get_objects())  # (isinstance may run a lazy module's __getattr__)

    async def main() -> int:
        server = NativeServer([handler], NativeConfig())
        port = await server.start("127.0.0.1", 0, None, False)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                unary = channel.unary_unary("/t.S/Echo")
                chat = channel.stream_stream("/t.S/Chat")
                assert await unary(b"x", timeout=30) == b"x"
                before = alive()
                gc.disable()
                try:
                    for i in range(20):
                        assert await unary(bytes([i]), timeout=30) == bytes([i])
                        assert [m async for m in chat(iter([b"a", b"b"]), timeout=30)] == [b"a", b"b"]
                    await asyncio.sleep(0.1)
                    return alive() - before
                finally:
                    gc.enable()
        finally:
            await server.stop(1)

    assert asyncio.run(main()) <= 0
