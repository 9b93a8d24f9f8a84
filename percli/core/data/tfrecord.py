"""TFRecord files and the two protobuf messages they usually hold (``tf.train.Example`` and
``tf.train.SequenceExample``), read and written without TensorFlow.

Framing (TensorFlow's ``record_writer``): each record is ``uint64 length`` (little-endian), the masked CRC32C
of those 8 bytes, ``length`` payload bytes and the masked CRC32C of the payload. Both checksums are verified
(CRC32C by ``google-crc32c``, a C implementation with a pure-Python fallback). What cannot be trusted is
counted and skipped, never fatal:

* a payload whose CRC does not match: that record (the length was verified, so the next record is found);
* a length whose CRC does not match, or a header or payload cut short by the end of the file: the rest of
  that file (record boundaries are lost), one bad record with the byte offset where it starts.

An empty file holds no records and is not an error. :func:`index_records` scans the headers only (a seek per
record, no payload read) and :func:`read_record` reads and checks one payload, so a dataset can index large
files quickly and verify each record when it reads it; :func:`read_records` does both in one pass.

Messages (``tensorflow/core/example/{example,feature}.proto``) are decoded and encoded by a small wire-format
codec of the fields these messages use: ``Example{features}``, ``SequenceExample{context, feature_lists}``,
``Features{map<string, Feature>}``, ``FeatureLists{map<string, FeatureList>}``, ``FeatureList{repeated
Feature}`` and ``Feature{bytes_list | float_list | int64_list}``. A feature value is decoded to ``list[bytes]``,
a float32 array or an int64 array; packed and unpacked repeated scalars are both read, packed ones written
(as protobuf does for proto3). Unknown fields are skipped, as a protobuf parser does.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import google_crc32c
import numpy as np

from percli.core.data.shards import BadRecords

HEADER_BYTES = 12  # uint64 length + masked CRC of the length
FOOTER_BYTES = 4  # masked CRC of the payload
_MASK_DELTA = 0xA282EAD8
_UINT64 = (1 << 64) - 1

FeatureValue = list[bytes] | np.ndarray
"""A decoded ``Feature``: ``list[bytes]`` (bytes_list), float32 array (float_list) or int64 array (int64_list)."""


class TFRecordError(ValueError):
    """A record whose framing or checksum is wrong, or whose payload is not the message expected."""


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C: the CRC rotated right by 15 bits plus a constant (mod 2^32)."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Framing


def frame_record(payload: bytes) -> bytes:
    """One record as it lies in a TFRecord file: header, payload, footer."""
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked_crc32c(length)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


def write_records(path: str | Path, payloads: Iterable[bytes]) -> int:
    """Write `payloads` as a TFRecord file, atomically (a temp name renamed into place); returns the count."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with tmp.open("wb") as f:
        for payload in payloads:
            f.write(frame_record(payload))
            count += 1
    tmp.replace(path)
    return count


def index_records(path: str | Path, bad: BadRecords | None = None) -> list[tuple[int, int]]:
    """``(offset, length)`` of every record whose header is sound, scanning headers only (module docstring).

    A damaged header or a record cut short ends the file's index and counts one bad record in `bad`.
    """
    path = Path(path)
    size = path.stat().st_size
    found: list[tuple[int, int]] = []
    with path.open("rb") as f:
        offset = 0
        while offset < size:
            reason = None
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                reason = f"truncated header: {len(header)} of {HEADER_BYTES} bytes at the end of the file"
            elif masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
                reason = "length CRC mismatch; the rest of the file is skipped (record boundaries are lost)"
            else:
                length = struct.unpack("<Q", header[:8])[0]
                end = offset + HEADER_BYTES + length + FOOTER_BYTES
                if end > size:
                    reason = f"truncated record: {length} payload bytes announced, {size - offset} bytes left"
            if reason is not None:
                if bad is not None:
                    bad.add(path, len(found), reason, where="record", offset=offset)
                break
            found.append((offset, length))
            offset = end
            f.seek(offset)
    return found


def read_record(f: IO[bytes], offset: int, length: int) -> bytes:
    """The payload of the record at `offset` of an open file, its CRC verified (`TFRecordError` otherwise)."""
    f.seek(offset + HEADER_BYTES)
    data = f.read(length + FOOTER_BYTES)
    if len(data) < length + FOOTER_BYTES:
        raise TFRecordError(f"truncated record at offset {offset}")
    payload = data[:length]
    if masked_crc32c(payload) != struct.unpack("<I", data[length:])[0]:
        raise TFRecordError(f"payload CRC mismatch at offset {offset}")
    return payload


def read_records(path: str | Path, bad: BadRecords | None = None) -> Iterator[bytes]:
    """The payloads of a TFRecord file, each verified; damaged records are counted in `bad` and skipped."""
    path = Path(path)
    index = index_records(path, bad)
    with path.open("rb") as f:
        for position, (offset, length) in enumerate(index):
            try:
                yield read_record(f, offset, length)
            except TFRecordError as e:
                if bad is not None:
                    bad.add(path, position, str(e), where="record", offset=offset)


# ---------------------------------------------------------------------------------------------
# Protobuf wire format: the fields of Example and SequenceExample


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("malformed message: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _UINT64, pos
        shift += 7
        if shift >= 70:
            raise TFRecordError("malformed message: varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field: an int for varints, the bytes for the other types."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
            continue
        if wire == 2:
            size, pos = _read_varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise TFRecordError(f"malformed message: wire type {wire} of field {number}")
        if pos + size > end:
            raise TFRecordError(f"malformed message: field {number} runs past the end")
        yield number, wire, buf[pos:pos + size]
        pos += size


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_feature(buf: memoryview) -> FeatureValue:
    for number, wire, data in _fields(buf):
        if wire != 2:
            continue
        if number == 1:  # BytesList
            return [bytes(v) for n, w, v in _fields(data) if n == 1 and w == 2]
        if number == 2:  # FloatList: packed (wire 2) or one fixed32 per value (wire 5)
            chunks = [np.frombuffer(v, dtype="<f4") for n, w, v in _fields(data) if n == 1 and w in (2, 5)]
            return np.concatenate(chunks).astype(np.float32) if chunks else np.empty(0, np.float32)
        if number == 3:  # Int64List: packed varints (wire 2) or one varint per value (wire 0)
            values: list[int] = []
            for n, w, v in _fields(data):
                if n == 1 and w == 0:
                    values.append(_signed(v))
                elif n == 1 and w == 2:
                    pos = 0
                    while pos < len(v):
                        item, pos = _read_varint(v, pos)
                        values.append(_signed(item))
            return np.asarray(values, dtype=np.int64)
    return np.empty(0, np.float32)  # a Feature with no kind set


def _decode_map(buf: memoryview, decode_value: Callable[[memoryview], Any]) -> dict[str, Any]:
    out = {}
    for number, wire, entry in _fields(buf):
        if number != 1 or wire != 2:
            continue
        key, value = "", memoryview(b"")
        for n, w, v in _fields(entry):
            if n == 1 and w == 2:
                key = bytes(v).decode("utf-8", errors="replace")
            elif n == 2 and w == 2:
                value = v
        out[key] = decode_value(value)
    return out


def _decode_features(buf: memoryview) -> dict[str, FeatureValue]:
    return _decode_map(buf, _decode_feature)


def _decode_feature_list(buf: memoryview) -> list[FeatureValue]:
    return [_decode_feature(v) for n, w, v in _fields(buf) if n == 1 and w == 2]


def decode_example(payload: bytes) -> dict[str, FeatureValue]:
    """The features of a serialised ``tf.train.Example`` by name."""
    features: dict[str, FeatureValue] = {}
    for number, wire, data in _fields(memoryview(payload)):
        if number == 1 and wire == 2:
            features.update(_decode_features(data))
    return features


def decode_sequence_example(payload: bytes) -> tuple[dict[str, FeatureValue], dict[str, list[FeatureValue]]]:
    """``(context, feature_lists)`` of a serialised ``tf.train.SequenceExample``."""
    context: dict[str, FeatureValue] = {}
    lists: dict[str, list[FeatureValue]] = {}
    for number, wire, data in _fields(memoryview(payload)):
        if number == 1 and wire == 2:
            context.update(_decode_features(data))
        elif number == 2 and wire == 2:
            lists.update(_decode_map(data, _decode_feature_list))
    return context, lists


def _varint(value: int) -> bytes:
    value &= _UINT64  # negative int64: ten bytes of two's complement, as protobuf writes them
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_feature(value: bytes | str | Sequence | np.ndarray) -> bytes:
    if isinstance(value, bytes | str):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[0], bytes | str):
        items = b"".join(_delimited(1, v.encode() if isinstance(v, str) else bytes(v)) for v in value)
        return _delimited(1, items)
    array = np.asarray(value)
    if array.dtype.kind == "f":
        packed = array.astype("<f4").tobytes()
        return _delimited(2, _delimited(1, packed) if packed else b"")
    if array.dtype.kind in "iub" or array.size == 0:
        packed = b"".join(_varint(int(v)) for v in array.reshape(-1))
        return _delimited(3, _delimited(1, packed) if packed else b"")
    raise TypeError(f"cannot store a {array.dtype} value in a tf.train.Feature (bytes, float or int64 only)")


def _encode_features(features: Mapping[str, object]) -> bytes:
    return b"".join(_delimited(1, _delimited(1, k.encode()) + _delimited(2, _encode_feature(v)))
                    for k, v in features.items())


def encode_example(features: Mapping[str, object]) -> bytes:
    """A serialised ``tf.train.Example``: bytes/str (or lists of them) become a bytes_list, float arrays a
    float_list, integer arrays (or lists of ints) an int64_list."""
    return _delimited(1, _encode_features(features))


def encode_sequence_example(context: Mapping[str, object], feature_lists: Mapping[str, Sequence[object]]) -> bytes:
    """A serialised ``tf.train.SequenceExample``: `context` as in :func:`encode_example`, each feature list one
    value per step."""
    lists = b"".join(
        _delimited(1, _delimited(1, k.encode()) + _delimited(2, b"".join(_delimited(1, _encode_feature(v))
                                                                         for v in steps)))
        for k, steps in feature_lists.items())
    return _delimited(1, _encode_features(context)) + _delimited(2, lists)
