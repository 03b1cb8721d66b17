"""The hand-written Datum codec against google.protobuf's parsing of the same bytes.

The reference is Caffe's Datum built at run time (tests/helpers/caffe_proto.py). Messages are generated
field by field, so the test knows where it put a wrong wire type; fuzzed truncations and bit flips
of valid records check that the codec raises nothing but ShardFormatError and never accepts a
value protobuf would not read.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from alexnet_pipe.shards import Datum, ShardFormatError

pytest.importorskip("google.protobuf", reason="google.protobuf is the codec's reference")
from helpers import caffe_proto  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

READ_FIELDS = {1: 0, 2: 0, 3: 0, 4: 2, 5: 0, 7: 0}  # the fields Datum reads -> their wire type
INT32 = st.integers(-(1 << 31), (1 << 31) - 1)


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def encode(fields) -> bytes:
    out = bytearray()
    for number, wire, payload in fields:
        out += varint(number << 3 | wire)
        if wire == 0:
            out += varint(payload)
        elif wire == 2:
            out += varint(len(payload)) + payload
        else:
            out += payload
    return bytes(out)


def parse_reference(buf: bytes):
    msg = caffe_proto.datum_class()()
    msg.ParseFromString(buf)
    return Datum(data=msg.data, label=msg.label, encoded=msg.encoded, channels=msg.channels,
                 height=msg.height, width=msg.width)


def payload(wire: int):
    if wire == 0:
        return st.integers(0, (1 << 64) - 1)
    if wire == 2:
        return st.binary(max_size=20)
    return st.binary(min_size=4 if wire == 5 else 8, max_size=4 if wire == 5 else 8)


field = st.tuples(st.one_of(st.integers(1, 9), st.integers(10, (1 << 29) - 1)), st.sampled_from([0, 1, 2, 5])) \
    .flatmap(lambda nw: st.tuples(st.just(nw[0]), st.just(nw[1]), payload(nw[1])))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(field, max_size=8))
def test_decoding_agrees_with_protobuf(fields):
    buf = encode(fields)
    mismatched = any(READ_FIELDS.get(n, w) != w for n, w, _ in fields)
    try:
        expected = parse_reference(buf)
    except DecodeError:
        expected = None
    if expected is None or mismatched:
        with pytest.raises(ShardFormatError):
            Datum.from_bytes(buf)
    else:
        assert Datum.from_bytes(buf) == expected


datums = st.builds(Datum, data=st.binary(max_size=64), label=INT32, encoded=st.booleans(),
                   channels=INT32, height=INT32, width=INT32)


@given(datums)
def test_encoding_is_what_protobuf_writes(datum):
    msg = caffe_proto.datum_class()(channels=datum.channels, height=datum.height, width=datum.width,
                                    data=datum.data, label=datum.label)
    if datum.encoded:
        msg.encoded = True
    assert datum.to_bytes() == msg.SerializeToString()
    assert parse_reference(datum.to_bytes()) == datum == Datum.from_bytes(datum.to_bytes())


def _decode_or_refuse(buf: bytes) -> None:
    """ShardFormatError, or exactly what protobuf reads: never another exception, never another value."""
    try:
        ours = Datum.from_bytes(buf)
    except ShardFormatError:
        return
    assert ours == parse_reference(buf)  # a DecodeError here: we accepted what protobuf refuses


@given(datums, st.data())
def test_truncated_records_are_refused_or_read_as_protobuf_reads_them(datum, data):
    buf = datum.to_bytes()
    cut = data.draw(st.integers(0, len(buf) - 1))
    _decode_or_refuse(buf[:cut])


@settings(max_examples=300)
@given(datums, st.data())
def test_bit_flips_and_overwrites_are_refused_or_read_as_protobuf_reads_them(datum, data):
    buf = bytearray(datum.to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            buf[pos] = data.draw(st.integers(0, 255))
    _decode_or_refuse(bytes(buf))


@pytest.mark.parametrize("buf, why", [
    (b"\x20\x05", "data (field 4) sent as a varint"),
    (b"\x2a\x01\x07", "label (field 5) sent length-delimited"),
    (b"\x3d\x01\x00\x00\x00", "encoded (field 7) sent as fixed32"),
    (b"\x35\x00\x00", "a fixed32 cut short"),
    (b"\x31" + bytes(5), "a fixed64 cut short"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "a varint of 11 bytes"),
    (b"\x00\x01", "field number 0"),
    (b"\x32\x03abc", "packed float_data of 3 bytes"),
])
def test_malformed_records_are_one_format_error(buf, why):
    with pytest.raises(ShardFormatError):
        Datum.from_bytes(buf)


def test_a_negative_label_in_a_five_byte_varint_is_negative():
    buf = b"\x28" + varint(0xFFFFFFFF)  # -1 written as an unsigned 32-bit varint, as some writers do
    assert len(buf) == 6 and parse_reference(buf).label == -1
    assert Datum.from_bytes(buf).label == -1


def test_unknown_and_float_fields_are_skipped_as_protobuf_skips_them():
    base = Datum(b"ab", 3, True, 3, 2, 2).to_bytes()
    extra = base + encode([(6, 5, struct.pack("<f", 1.5)), (6, 2, bytes(8)), (99, 1, bytes(8)), (6, 1, bytes(8))])
    assert Datum.from_bytes(extra) == parse_reference(extra) == Datum(b"ab", 3, True, 3, 2, 2)
