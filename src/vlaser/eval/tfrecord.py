"""Reading TFRecord files of ``tf.train.Example`` without TensorFlow.

A small reader (numpy only) rather than the ``tfrecord`` PyPI package: no new dependency for one file format,
and every record's two checksums are verified, so a corrupt or cut-off download is named instead of half-read.
Two parts:

- the record framing (TensorFlow's ``core/lib/io/record_writer.cc``, mask in ``core/lib/hash/crc32c.h``):
  ``uint64 length``, ``uint32 masked_crc32c(length bytes)``, ``data``, ``uint32 masked_crc32c(data)``, all
  little-endian; a bad checksum or a truncated record is a ``BenchmarkDataError`` naming the file and record index;
- the protobuf wire format of ``tf.train.Example`` (``tensorflow/core/example/{example,feature}.proto``):
  ``Example.features`` (1) -> ``Features.feature`` (1, a map ``string -> Feature``) -> one of ``bytes_list`` (1),
  ``float_list`` (2), ``int64_list`` (3), each a ``repeated value = 1``; packed and unpacked encodings of the
  numeric lists are both read, as protobuf parsers must.

CRC-32C (Castagnoli) has no stdlib implementation; a byte-at-a-time Python loop runs at a few MB/s, too slow for
a file of JPEGs, so long buffers are split into equal lanes whose registers advance together in numpy and are then
chained with the linear "advance over N zero bytes" operator (the same identity zlib's ``crc32_combine`` uses).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vlaser.eval.benchmark import BenchmarkDataError

_POLY = 0x82F63B78  # CRC-32C, reflected
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MIN_LANE_BYTES = 64  # below this many bytes per lane numpy's per-step overhead outweighs the Python loop

Feature = list[bytes] | list[float] | list[int]


@functools.lru_cache(maxsize=1)
def _table() -> np.ndarray:
    """``table[b]``: the register after shifting byte ``b`` through the reflected polynomial."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


@functools.lru_cache(maxsize=1)
def _table_list() -> list[int]:
    return [int(v) for v in _table()]


def _advance_bytes(register: int, data: bytes | memoryview) -> int:
    """The CRC register after ``data``, one byte at a time (for short inputs and tails)."""
    table = _table_list()
    for byte in bytes(data):
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _advance(register: int, data: bytes | memoryview) -> int:
    """The CRC register after ``data``: equal lanes in parallel, chained by the zero-advance operator."""
    n = len(data)
    lanes = min(4096, int((8 * n) ** 0.5), n // _MIN_LANE_BYTES)
    if lanes < 16:
        return _advance_bytes(register, data)
    width = n // lanes
    body = np.frombuffer(data, dtype=np.uint8, count=lanes * width).reshape(lanes, width)
    # 32 extra lanes see only zero bytes from the unit registers: they give the operator's columns
    columns = np.zeros((width, lanes + 32), dtype=np.uint8)
    columns[:, :lanes] = body.T
    registers = np.zeros(lanes + 32, dtype=np.uint32)
    registers[0] = register
    registers[lanes:] = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    table = _table()
    for row in columns:
        registers = table[(registers ^ row) & 0xFF] ^ (registers >> 8)
    shift = _byte_tables(registers[lanes:])
    total = int(registers[0])
    for lane in registers[1:lanes].tolist():
        total = (int(shift[0][total & 0xFF]) ^ int(shift[1][(total >> 8) & 0xFF])
                 ^ int(shift[2][(total >> 16) & 0xFF]) ^ int(shift[3][total >> 24])) ^ lane
    return _advance_bytes(total, memoryview(data)[lanes * width:])


def _byte_tables(columns: np.ndarray) -> list[np.ndarray]:
    """Lookup tables applying a 32x32 GF(2) operator (given by its columns) one register byte at a time."""
    values = np.arange(256)
    tables = []
    for part in range(4):
        table = np.zeros(256, dtype=np.uint32)
        for bit in range(8):
            table[(values >> bit) & 1 == 1] ^= columns[8 * part + bit]
        tables.append(table)
    return tables


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C of ``data`` (``crc32c(b"123456789") == 0xE3069283``)."""
    return _advance(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked checksum: rotate right by 15 bits, add a constant (so CRCs of CRCs stay informative)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(path: Path) -> Iterator[bytes]:
    """The payload of every record, in file order, after checking both checksums of each."""
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        index = 0
        while True:
            header = stream.read(_HEADER.size)
            if not header:
                return
            where = f"{path}: record {index}"
            if len(header) < _HEADER.size:
                raise BenchmarkDataError(f"{where}: truncated header ({len(header)} of {_HEADER.size} bytes)")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise BenchmarkDataError(f"{where}: length checksum mismatch (not a TFRecord file, or corrupt)")
            if stream.tell() + length + _FOOTER.size > size:
                raise BenchmarkDataError(f"{where}: truncated ({length} data bytes announced, "
                                         f"{max(0, size - stream.tell() - _FOOTER.size)} left in the file)")
            data = stream.read(length)
            (data_crc,) = _FOOTER.unpack(stream.read(_FOOTER.size))
            if masked_crc32c(data) != data_crc:
                raise BenchmarkDataError(f"{where}: data checksum mismatch (the file is corrupt)")
            yield data
            index += 1


def read_examples(path: Path) -> Iterator[tuple[int, dict[str, Feature]]]:
    """``(record index, features)`` for every ``tf.train.Example`` in a TFRecord file."""
    for index, data in enumerate(iter_records(path)):
        try:
            features = parse_example(data)
        except ValueError as e:
            raise BenchmarkDataError(f"{path}: record {index}: not a tf.train.Example ({e})") from e
        yield index, features


# ---- protobuf wire format --------------------------------------------------------------------------------------

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """A base-128 varint starting at ``pos``; returns ``(value, next position)``."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of the message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` of each field; length-delimited values stay memoryviews."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > len(buf):
                raise ValueError("fixed-width field runs past the end of the message")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        elif wire == _LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError(f"field {number}: {size} bytes announced, {len(buf) - pos} left")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


def _expect(number: int, wire: int, wanted: int, message: str) -> None:
    if wire != wanted:
        raise ValueError(f"{message} field {number} has wire type {wire}, expected {wanted}")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _bytes_list(buf: memoryview) -> list[bytes]:
    values = []
    for number, wire, value in _fields(buf):
        if number == 1:
            _expect(number, wire, _LENGTH, "BytesList")
            values.append(bytes(value))
    return values


def _float_list(buf: memoryview) -> list[float]:
    values: list[float] = []
    for number, wire, value in _fields(buf):
        if number != 1:
            continue
        if wire == _LENGTH:  # packed
            if len(value) % 4:
                raise ValueError(f"packed FloatList of {len(value)} bytes is not a multiple of 4")
            values.extend(struct.unpack(f"<{len(value) // 4}f", value))
        else:
            _expect(number, wire, _FIXED32, "FloatList")
            values.append(struct.unpack("<f", value.to_bytes(4, "little"))[0])
    return values


def _int64_list(buf: memoryview) -> list[int]:
    values = []
    for number, wire, value in _fields(buf):
        if number != 1:
            continue
        if wire == _LENGTH:  # packed
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                values.append(_signed64(item))
        else:
            _expect(number, wire, _VARINT, "Int64List")
            values.append(_signed64(value))
    return values


_KINDS = {1: _bytes_list, 2: _float_list, 3: _int64_list}


def _feature(buf: memoryview) -> Feature:
    """The value list of a ``Feature``; an unset ``kind`` is an empty list (as TensorFlow reads it)."""
    result: Feature = []
    for number, wire, value in _fields(buf):
        if number in _KINDS:
            _expect(number, wire, _LENGTH, "Feature")
            result = _KINDS[number](value)  # a oneof: the last one on the wire wins
    return result


def _map_entry(buf: memoryview) -> tuple[str, Feature]:
    key, feature = "", []
    for number, wire, value in _fields(buf):
        if number == 1:
            _expect(number, wire, _LENGTH, "Features map entry")
            try:
                key = bytes(value).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"feature name is not UTF-8: {bytes(value)[:40]!r}") from e
        elif number == 2:
            _expect(number, wire, _LENGTH, "Features map entry")
            feature = _feature(value)
    return key, feature


def parse_example(data: bytes) -> dict[str, Feature]:
    """Feature name -> its list of values (bytes, floats or ints) for one serialized ``tf.train.Example``."""
    features: dict[str, Feature] = {}
    for number, wire, value in _fields(memoryview(data)):
        if number != 1:
            continue
        _expect(number, wire, _LENGTH, "Example")
        for inner, inner_wire, entry in _fields(value):
            if inner == 1:
                _expect(inner, inner_wire, _LENGTH, "Features")
                key, feature = _map_entry(entry)
                features[key] = feature  # a repeated map key: the last wins, as in protobuf
    return features
