"""Prometheus remote write 1.0 bodies taken apart, with the standard library
only: snappy's block format (not the framed one) and the protobuf wire
format of WriteRequest / TimeSeries / Label / Sample (field numbers of the
spec, as in exporter/remote.proto). Written from the two formats' texts, not
from tokmon's C, so that it checks rw.c rather than repeats it.

    series = decode_body(body)          # [Series(labels=[(name, value)...],
                                        #          samples=[(value, ts_ms)...])]
    problems = check_request(headers, body)   # [] when it follows the spec

`python3 rw_decode.py FILE` prints a body saved in FILE as JSON lines.
"""

import json
import math
import re
import struct
import sys
from collections import namedtuple

Series = namedtuple("Series", "labels samples")

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# what every request must carry (header names compared without case)
REQUIRED_HEADERS = {
    "content-encoding": "snappy",
    "content-type": "application/x-protobuf",
    "x-prometheus-remote-write-version": "0.1.0",
}


class DecodeError(ValueError):
    pass


# ---- varints -------------------------------------------------------------------

def _varint(buf, i):
    """(value, next index) of the unsigned LEB128 varint at buf[i]."""
    v = 0
    shift = 0
    while True:
        if i >= len(buf):
            raise DecodeError("varint runs past the end")
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, i
        shift += 7
        if shift >= 64:
            raise DecodeError("varint longer than 10 bytes")


# ---- snappy, block format ----------------------------------------------------------

def snappy_decompress(data):
    """The block format: the uncompressed length as a varint, then literals
    and back-references (copies with 1-, 2- or 4-byte offsets)."""
    data = bytes(data)
    n, i = _varint(data, 0)
    out = bytearray()
    while i < len(data):
        tag = data[i]
        i += 1
        kind = tag & 3
        if kind == 0:  # literal
            ln = tag >> 2
            if ln >= 60:
                k = ln - 59
                if i + k > len(data):
                    raise DecodeError("literal length runs past the end")
                ln = int.from_bytes(data[i:i + k], "little")
                i += k
            ln += 1
            if i + ln > len(data):
                raise DecodeError("literal runs past the end")
            out += data[i:i + ln]
            i += ln
            continue
        if kind == 1:
            ln = ((tag >> 2) & 7) + 4
            if i >= len(data):
                raise DecodeError("copy runs past the end")
            off = ((tag >> 5) << 8) | data[i]
            i += 1
        else:
            ln = (tag >> 2) + 1
            k = 2 if kind == 2 else 4
            if i + k > len(data):
                raise DecodeError("copy runs past the end")
            off = int.from_bytes(data[i:i + k], "little")
            i += k
        if off == 0 or off > len(out):
            raise DecodeError("copy offset %d outside the %d bytes so far" % (off, len(out)))
        start = len(out) - off
        for j in range(ln):  # may overlap what it writes
            out.append(out[start + j])
    if len(out) != n:
        raise DecodeError("uncompressed length %d, the header says %d" % (len(out), n))
    return bytes(out)


def snappy_compress_literal(data):
    """Valid snappy of data with no compression at all (literals only): for
    tests that need to send a body of their own."""
    data = bytes(data)
    out = bytearray(_put_varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i:i + 65536]
        ln = len(chunk) - 1
        if ln < 60:
            out.append(ln << 2)
        elif ln < 256:
            out += bytes([60 << 2, ln])
        else:
            out += bytes([61 << 2]) + ln.to_bytes(2, "little")
        out += chunk
    return bytes(out)


# ---- protobuf wire format --------------------------------------------------------------

def _fields(buf):
    """(field number, wire type, value) of each field of one message:
    varints as int, fixed64/fixed32 as raw bytes, length-delimited as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise DecodeError("field number 0")
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            if i + 8 > len(buf):
                raise DecodeError("fixed64 runs past the end")
            v = buf[i:i + 8]
            i += 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            if i + ln > len(buf):
                raise DecodeError("field %d: %d bytes past the end" % (num, ln))
            v = buf[i:i + ln]
            i += ln
        elif wt == 5:
            if i + 4 > len(buf):
                raise DecodeError("fixed32 runs past the end")
            v = buf[i:i + 4]
            i += 4
        else:
            raise DecodeError("wire type %d (groups are not proto3)" % wt)
        yield num, wt, v


def _want(num, wt, want, what):
    if wt != want:
        raise DecodeError("%s field %d: wire type %d, not %d" % (what, num, wt, want))


def _text(b, what):
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError("%s is not UTF-8: %s" % (what, e))


def _label(buf):
    name = value = ""
    for num, wt, v in _fields(buf):
        if num in (1, 2):
            _want(num, wt, 2, "Label")
            if num == 1:
                name = _text(v, "a label name")
            else:
                value = _text(v, "a label value")
    return name, value


def _sample(buf):
    value, ts = 0.0, 0
    for num, wt, v in _fields(buf):
        if num == 1:
            _want(num, wt, 1, "Sample")
            value = struct.unpack("<d", v)[0]
        elif num == 2:
            _want(num, wt, 0, "Sample")
            ts = v - (1 << 64) if v >= 1 << 63 else v  # int64: two's complement
    return value, ts


def decode_write_request(raw):
    """The TimeSeries of a serialized WriteRequest, in order. Unknown fields
    are skipped, as protobuf does; reserved ones (2, 3) are an error."""
    series = []
    for num, wt, v in _fields(bytes(raw)):
        if num in (2, 3):
            raise DecodeError("WriteRequest field %d is reserved in remote write 1.0" % num)
        if num != 1:
            continue
        _want(num, wt, 2, "WriteRequest")
        labels, samples = [], []
        for n2, w2, v2 in _fields(v):
            if n2 == 1:
                _want(n2, w2, 2, "TimeSeries")
                labels.append(_label(v2))
            elif n2 == 2:
                _want(n2, w2, 2, "TimeSeries")
                samples.append(_sample(v2))
        series.append(Series(labels, samples))
    return series


def decode_body(body):
    """A request body as sent: snappy block format around a WriteRequest."""
    return decode_write_request(snappy_decompress(body))


def _put_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(num, payload):
    return _put_varint(num << 3 | 2) + _put_varint(len(payload)) + payload


def encode_write_request(series):
    """The inverse of decode_write_request (for tests that send their own):
    series is [(labels [(name, value)], samples [(value, ts_ms)])]."""
    out = bytearray()
    for labels, samples in series:
        ts = bytearray()
        for name, value in labels:
            ts += _ld(1, _ld(1, name.encode()) + _ld(2, value.encode()))
        for value, t in samples:
            s = bytes([1 << 3 | 1]) + struct.pack("<d", value)
            s += _put_varint(2 << 3) + _put_varint(t & 0xFFFFFFFFFFFFFFFF)
            ts += _ld(2, s)
        out += _ld(1, bytes(ts))
    return bytes(out)


# ---- the spec's rules ----------------------------------------------------------------------

def series_name(s):
    for k, v in s.labels:
        if k == "__name__":
            return v
    return None


def check_series(s):
    """What is wrong with one series by remote write 1.0: [] when nothing."""
    p = []
    names = [k for k, _ in s.labels]
    name = series_name(s)
    if name is None:
        p.append("no __name__ in %r" % (s.labels,))
    elif not METRIC_NAME.match(name):
        p.append("metric name %r" % name)
    for k, v in s.labels:
        if not LABEL_NAME.match(k):
            p.append("label name %r in %s" % (k, name))
        if v == "":
            p.append("empty value of label %r in %s" % (k, name))
    enc = [k.encode() for k in names]
    if enc != sorted(enc):
        p.append("labels not sorted by name: %r" % names)
    if len(set(names)) != len(names):
        p.append("a label name twice: %r" % names)
    if not s.samples:
        p.append("no samples in %s" % name)
    ts = [t for _, t in s.samples]
    if ts != sorted(ts):
        p.append("samples out of order in %s" % name)
    return p


def check_request(headers, body, user_agent_prefix="tokmon-exporter/"):
    """Everything wrong with one request (headers: a mapping or a list of
    pairs, any case): the three required headers, a User-Agent, the body
    decoding, and every series' rules. [] when it is fine."""
    items = headers.items() if hasattr(headers, "items") else headers
    h = {}
    for k, v in items:
        h[k.lower()] = v
    p = []
    for k, want in REQUIRED_HEADERS.items():
        if h.get(k) != want:
            p.append("header %s: %r, not %r" % (k, h.get(k), want))
    ua = h.get("user-agent", "")
    if not ua.startswith(user_agent_prefix):
        p.append("user-agent %r" % ua)
    try:
        series = decode_body(body)
    except DecodeError as e:
        return p + ["body: %s" % e]
    for s in series:
        p += check_series(s)
    return p


def to_jsonable(series):
    def num(v):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return v
    return [{"labels": [[k, v] for k, v in s.labels],
             "samples": [[num(v), t] for v, t in s.samples]} for s in series]


def main(argv):
    if len(argv) != 2:
        print("usage: rw_decode.py FILE (a snappy-compressed WriteRequest)", file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        body = f.read()
    for s in to_jsonable(decode_body(body)):
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
