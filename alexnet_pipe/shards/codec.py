"""The Datum codec: the protobuf wire format of Caffe's ``Datum``, by hand.

We need five of the message's fields, so the wire format is written here instead of pulling in protobuf
(the codec is ~40 lines and tested against google.protobuf's own encoding). Field numbers are Caffe's
(caffe.proto):

    message Datum { int32 channels = 1; int32 height = 2; int32 width = 3;
                    bytes data = 4; int32 label = 5; repeated float float_data = 6;
                    bool encoded = 7; }
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

from alexnet_pipe.core.errors import ShardFormatError

def varint(value: int) -> bytes:
    if value < 0:  # int32 negatives are sign-extended to 10 bytes on the wire
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10  # a 64-bit value in 7-bit groups


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A varint as protobuf reads it: at most 10 bytes, bits beyond 64 dropped."""
    result = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise ShardFormatError("truncated varint")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result & ((1 << 64) - 1), pos + i + 1
    raise ShardFormatError("varint longer than 10 bytes")


def _int32(value: int) -> int:
    """protobuf's int32 from a varint: the low 32 bits, two's complement (so 0xFFFFFFFF is -1)."""
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >= 1 << 31 else value


def _read_field(buf: bytes, pos: int) -> tuple[int, int, object, int]:
    key, pos = _read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if not 0 < number < 1 << 29:  # protobuf's range of field numbers
        raise ShardFormatError(f"field number {number} out of range")
    if wire == VARINT:
        value, pos = _read_varint(buf, pos)
        return number, wire, value, pos
    if wire == LENGTH_DELIMITED:
        length, pos = _read_varint(buf, pos)
    elif wire in (FIXED32, FIXED64):
        length = 4 if wire == FIXED32 else 8
    else:  # 3 and 4 are proto1 groups, which no Datum holds; 6 and 7 do not exist
        raise ShardFormatError(f"unsupported wire type {wire} (field {number})")
    if length > len(buf) - pos:
        raise ShardFormatError(f"field {number} is truncated ({length} bytes announced, {len(buf) - pos} left)")
    return number, wire, buf[pos:pos + length], pos + length


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of a protobuf message; any malformation is a
    ShardFormatError."""
    pos = 0
    while pos < len(buf):
        number, wire, value, pos = _read_field(buf, pos)
        yield number, wire, value


def encode_field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def encode_field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


@dataclasses.dataclass(frozen=True)
class Datum:
    data: bytes
    label: int
    encoded: bool
    channels: int = 3
    height: int = 0
    width: int = 0

    def to_bytes(self) -> bytes:
        parts = [encode_field_varint(1, self.channels), encode_field_varint(2, self.height),
                 encode_field_varint(3, self.width), encode_field_bytes(4, self.data),
                 encode_field_varint(5, self.label)]
        if self.encoded:
            parts.append(encode_field_varint(7, 1))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, buf: bytes) -> "Datum":
        """Parse a Datum; anything that is not one (wrong wire type, truncation) is a ShardFormatError.

        Fields come last-one-wins and unknown fields are skipped, as protobuf does; a field this
        reads (not float_data) in another wire type, which protobuf would keep aside as unknown,
        is refused here: it would otherwise read as an empty image or label 0.
        """
        fields = {1: 0, 2: 0, 3: 0, 4: b"", 5: 0, 7: 0}
        for number, wire, value in iter_fields(buf):
            if number in fields:
                if wire != _DATUM_WIRE[number]:
                    raise ShardFormatError(f"field {number} ({_DATUM_NAMES[number]}) has wire type {wire}, "
                                           f"a Datum has {_DATUM_WIRE[number]}")
                fields[number] = value
            elif number == 6 and wire == LENGTH_DELIMITED and len(value) % 4:
                raise ShardFormatError(f"packed float_data of {len(value)} bytes, not a multiple of 4")
        return cls(data=bytes(fields[4]), label=_int32(fields[5]), encoded=bool(fields[7]),
                   channels=_int32(fields[1]), height=_int32(fields[2]), width=_int32(fields[3]))


_DATUM_NAMES = {1: "channels", 2: "height", 3: "width", 4: "data", 5: "label", 7: "encoded"}
_DATUM_WIRE = {1: VARINT, 2: VARINT, 3: VARINT, 4: LENGTH_DELIMITED, 5: VARINT, 7: VARINT}
