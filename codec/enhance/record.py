"""The enhancer record of a GOP payload (GOP format 6; docs/FORMAT.md section 2).

Layout (little-endian)::

    tag      u16  model tag: first two bytes of the weights file's SHA-256 (codec.enhance.weights)
    t        u8   strength level; the network runs at t = level / 255
    flags    u8   bit 0: modulation present; bits 1-2: modulation step index into MOD_STEPS;
                  bit 3 (GOP format 7): a per-GOP filter section follows; bit 4 (format 7):
                  the network is not run (the filter alone); bits 5-7 zero (bits 3-7 in format 6)
    (modulation present)
    scale    u8   1..255: Laplace scale of the levels, scale / 16 levels
    length   varint  bytes of the range-coded levels, 1 .. MAX_MOD_BYTES
    body     length bytes: N_MOD levels in [-MOD_MAX, MOD_MAX], constriction range coder,
             QuantizedLaplace(mean 0, scale), trailing zero bytes of the last word dropped
    (filter present, GOP format 7)
    kind     u8   bits 0-1: shape index into gopfilter.SHAPES; bits 2-4: step index into
                  gopfilter.STEP_BITS; bits 5-7 zero
    scale    u8   1..255, as above, for the filter's levels
    length   varint  1 .. MAX_FILTER_BYTES
    body     3 x n_coefs(shape) levels in [-FILTER_MAX, FILTER_MAX], coded like the modulation

Nothing may follow. The modulation vector is ``levels * MOD_STEPS[step]``; the filter is
``gopfilter.dequantise(levels, shape, STEP_BITS[step])``, applied after the network (or alone).
Every malformed record raises BitstreamError; no field can make the decoder allocate more than
N_MOD modulation values or 3 x 76 filter coefficients.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np

from codec.bitstream import read_varint, write_varint
from codec.enhance import gopfilter
from codec.errors import BitstreamError

MOD_STEPS = (1.0 / 32.0, 1.0 / 16.0, 1.0 / 8.0)  # modulation quantiser steps
MOD_MAX = 127  # largest |level|
MAX_MOD_BYTES = 1024
SCALE_UNIT = 16.0  # scale code units per level
_FLAG_MOD = 1
_STEP_SHIFT, _STEP_MASK = 1, 0b110
_FLAGS_USED = _FLAG_MOD | _STEP_MASK  # GOP format 6
_FLAG_FILTER, _FLAG_NO_NET = 1 << 3, 1 << 4
_FLAGS_USED_7 = _FLAGS_USED | _FLAG_FILTER | _FLAG_NO_NET
_MODEL = constriction.stream.model.QuantizedLaplace(-MOD_MAX, MOD_MAX)
FILTER_MAX = 4095  # largest |filter level|
MAX_FILTER_BYTES = 4096
_FILTER_MODEL = constriction.stream.model.QuantizedLaplace(-FILTER_MAX, FILTER_MAX)
FILTER_MIN_FORMAT = 7  # GOP format that introduced the filter section and flag bits 3-4
WHAT = "enhancer record"


@dataclass(frozen=True)
class EnhancerRecord:
    """What the decoder needs to enhance a GOP."""

    model_tag: int  # u16
    t_level: int  # 0..255
    mod_step: int = 0  # index into MOD_STEPS
    scale_code: int = 0  # 1..255 when levels are present
    levels: tuple[int, ...] | None = None  # N_MOD modulation levels, or None (base network)
    run_network: bool = True  # False: the filter alone (format 7)
    filter_shape: int = 0  # index into gopfilter.SHAPES
    filter_step: int = 0  # index into gopfilter.STEP_BITS
    filter_scale: int = 0  # 1..255 when filter levels are present
    filter_levels: tuple[int, ...] | None = None  # 3 x n_coefs(shape) levels, or None

    def filter_coefs(self) -> np.ndarray | None:
        """float64 [3, n_coefs] of the per-GOP filter, or None."""
        if self.filter_levels is None:
            return None
        lv = np.asarray(self.filter_levels, dtype=np.int64).reshape(3, -1)
        return gopfilter.dequantise(lv, self.filter_shape, gopfilter.STEP_BITS[self.filter_step])

    @property
    def t(self) -> float:
        return self.t_level / 255.0

    def modulation(self) -> np.ndarray | None:
        """float32 [N_MOD] modulation vector, or None."""
        if self.levels is None:
            return None
        return np.asarray(self.levels, dtype=np.float32) * np.float32(MOD_STEPS[self.mod_step])


def scale_code_for(levels: np.ndarray) -> int:
    """The u8 scale code of a Laplace fitted to ``levels`` (mean |level|, at least 1/16)."""
    return int(np.clip(round(float(np.mean(np.abs(levels))) * SCALE_UNIT), 1, 255))


def _coder_args(n: int, scale_code: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(n, dtype=np.float64), np.full(n, scale_code / SCALE_UNIT, dtype=np.float64)


def _body(levels: np.ndarray, model: object, scale_code: int) -> bytes:
    """varint length + range-coded ``levels`` (trailing zero bytes dropped, at least 1 byte)."""
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(levels.astype(np.int32), model, *_coder_args(levels.size, scale_code))
    body = enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0")
    if not body:
        body = b"\0"  # length is at least 1 so a record always holds its body
    return write_varint(len(body)) + body


def encode_record(rec: EnhancerRecord) -> bytes:
    """The record's bytes; raises ValueError on out-of-range fields."""
    if not (0 <= rec.model_tag <= 0xFFFF and 0 <= rec.t_level <= 255):
        raise ValueError(f"enhancer record: model_tag/t_level out of range in {rec}")
    if not 0 <= rec.mod_step < len(MOD_STEPS):
        raise ValueError(f"enhancer record: mod_step {rec.mod_step} out of range")
    flags = rec.mod_step << _STEP_SHIFT
    if rec.filter_levels is not None:
        flags |= _FLAG_FILTER
    if not rec.run_network:
        if rec.filter_levels is None or rec.levels is not None:
            raise ValueError(
                "enhancer record: skipping the network needs a filter and no modulation"
            )
        flags |= _FLAG_NO_NET
    out = bytearray(struct.pack("<HB", rec.model_tag, rec.t_level))
    if rec.levels is None:
        out.append(flags)
    else:
        levels = np.asarray(rec.levels, dtype=np.int64)
        if levels.size == 0 or np.abs(levels).max() > MOD_MAX or not 1 <= rec.scale_code <= 255:
            raise ValueError("enhancer record: modulation levels or scale out of range")
        out.append(flags | _FLAG_MOD)
        out.append(rec.scale_code)
        out += _body(levels, _MODEL, rec.scale_code)
    if rec.filter_levels is not None:
        fl = np.asarray(rec.filter_levels, dtype=np.int64)
        shape_ok = 0 <= rec.filter_shape < len(gopfilter.SHAPES)
        if not shape_ok or not 0 <= rec.filter_step < len(gopfilter.STEP_BITS):
            raise ValueError("enhancer record: filter shape or step out of range")
        if fl.size != 3 * gopfilter.n_coefs(rec.filter_shape) or np.abs(fl).max() > FILTER_MAX:
            raise ValueError("enhancer record: filter levels out of range")
        if not 1 <= rec.filter_scale <= 255:
            raise ValueError("enhancer record: filter scale out of range")
        out.append(rec.filter_shape | rec.filter_step << 2)
        out.append(rec.filter_scale)
        out += _body(fl, _FILTER_MODEL, rec.filter_scale)
    return bytes(out)


def _read_body(
    data: bytes, pos: int, n: int, model: object, scale_code: int, max_bytes: int, what: str
) -> tuple[np.ndarray, int]:
    """(int64 [n] levels, position after the body) of a varint-framed range-coded body at ``pos``."""
    length, pos = read_varint(data, pos, WHAT)
    if not 1 <= length <= max_bytes or pos + length > len(data):
        raise BitstreamError(
            f"{WHAT}: {what} body claims {length} bytes at byte {pos}, "
            f"{len(data) - pos} present (1..{max_bytes})"
        )
    raw = data[pos : pos + length].rstrip(b"\0")
    raw += b"\0" * (-len(raw) % 4)
    try:
        dec = constriction.stream.queue.RangeDecoder(
            np.frombuffer(raw, dtype="<u4").astype(np.uint32)
        )
        levels = np.asarray(dec.decode(model, *_coder_args(n, scale_code)), dtype=np.int64)
        exhausted = dec.maybe_exhausted()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # constriction raises AssertionError or a pyo3 PanicException
        raise BitstreamError(f"{WHAT}: invalid range-coded {what} ({exc})") from exc
    if not exhausted:
        raise BitstreamError(f"{WHAT}: {what} body has data past its {n} values")
    return levels, pos + length


def decode_record(data: bytes, n_mod: int, fmt: int = FILTER_MIN_FORMAT) -> EnhancerRecord:
    """Parse a record (of GOP format ``fmt``) whose modulation (if any) has ``n_mod`` values;
    raises BitstreamError."""
    if len(data) < 4:
        raise BitstreamError(f"{WHAT}: {len(data)} bytes is too short (at least 4)")
    tag, t_level, flags = struct.unpack_from("<HBB", data, 0)
    used = _FLAGS_USED_7 if fmt >= FILTER_MIN_FORMAT else _FLAGS_USED
    if flags & ~used:
        raise BitstreamError(f"{WHAT}: unknown flag bits {flags:#04x} at byte 3")
    step = (flags & _STEP_MASK) >> _STEP_SHIFT
    if step >= len(MOD_STEPS):
        raise BitstreamError(f"{WHAT}: modulation step index {step} out of range at byte 3")
    has_mod, has_filter = bool(flags & _FLAG_MOD), bool(flags & _FLAG_FILTER)
    run_network = not flags & _FLAG_NO_NET
    if not run_network and (has_mod or not has_filter):
        raise BitstreamError(f"{WHAT}: 'no network' needs a filter and no modulation (byte 3)")
    pos, scale_code, levels = 4, 0, None
    if has_mod:
        if len(data) < 6:
            raise BitstreamError(f"{WHAT}: modulation header truncated at byte 4")
        scale_code = data[4]
        if scale_code == 0:
            raise BitstreamError(f"{WHAT}: zero modulation scale at byte 4")
        lv, pos = _read_body(data, 5, n_mod, _MODEL, scale_code, MAX_MOD_BYTES, "modulation")
        levels = tuple(int(v) for v in lv)
    f_shape = f_step = f_scale = 0
    f_levels = None
    if has_filter:
        if len(data) < pos + 3:
            raise BitstreamError(f"{WHAT}: filter header truncated at byte {pos}")
        kind, f_scale = data[pos], data[pos + 1]
        f_shape, f_step = kind & 0b11, (kind >> 2) & 0b111
        if kind >> 5 or f_shape >= len(gopfilter.SHAPES) or f_step >= len(gopfilter.STEP_BITS):
            raise BitstreamError(f"{WHAT}: unknown filter kind {kind:#04x} at byte {pos}")
        if f_scale == 0:
            raise BitstreamError(f"{WHAT}: zero filter scale at byte {pos + 1}")
        n = 3 * gopfilter.n_coefs(f_shape)
        fl, pos = _read_body(data, pos + 2, n, _FILTER_MODEL, f_scale, MAX_FILTER_BYTES, "filter")
        f_levels = tuple(int(v) for v in fl)
    if pos != len(data):
        raise BitstreamError(f"{WHAT}: {len(data) - pos} unexpected bytes after byte {pos}")
    return EnhancerRecord(
        tag, t_level, step, scale_code, levels, run_network, f_shape, f_step, f_scale, f_levels
    )
