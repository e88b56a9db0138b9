"""The enhancer record of a GOP payload (GOP format 6; docs/FORMAT.md section 2).

Layout (little-endian)::

    tag      u16  model tag: first two bytes of the weights file's SHA-256 (codec.enhance.weights)
    t        u8   strength level; the network runs at t = level / 255
    flags    u8   bit 0: modulation present; bits 1-2: modulation step index into MOD_STEPS;
                  bits 3-7 zero
    (modulation present)
    scale    u8   1..255: Laplace scale of the levels, scale / 16 levels
    length   varint  bytes of the range-coded levels, 1 .. MAX_MOD_BYTES
    body     length bytes: N_MOD levels in [-MOD_MAX, MOD_MAX], constriction range coder,
             QuantizedLaplace(mean 0, scale), trailing zero bytes of the last word dropped

Nothing may follow. The modulation vector is ``levels * MOD_STEPS[step]``. Every malformed record
raises BitstreamError; no field can make the decoder allocate more than N_MOD values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np

from codec.bitstream import read_varint, write_varint
from codec.errors import BitstreamError

MOD_STEPS = (1.0 / 32.0, 1.0 / 16.0, 1.0 / 8.0)  # modulation quantiser steps
MOD_MAX = 127  # largest |level|
MAX_MOD_BYTES = 1024
SCALE_UNIT = 16.0  # scale code units per level
_FLAG_MOD = 1
_STEP_SHIFT, _STEP_MASK = 1, 0b110
_FLAGS_USED = _FLAG_MOD | _STEP_MASK
_MODEL = constriction.stream.model.QuantizedLaplace(-MOD_MAX, MOD_MAX)
WHAT = "enhancer record"


@dataclass(frozen=True)
class EnhancerRecord:
    """What the decoder needs to enhance a GOP."""

    model_tag: int  # u16
    t_level: int  # 0..255
    mod_step: int = 0  # index into MOD_STEPS
    scale_code: int = 0  # 1..255 when levels are present
    levels: tuple[int, ...] | None = None  # N_MOD modulation levels, or None (base network)

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


def encode_record(rec: EnhancerRecord) -> bytes:
    """The record's bytes; raises ValueError on out-of-range fields."""
    if not (0 <= rec.model_tag <= 0xFFFF and 0 <= rec.t_level <= 255):
        raise ValueError(f"enhancer record: model_tag/t_level out of range in {rec}")
    if not 0 <= rec.mod_step < len(MOD_STEPS):
        raise ValueError(f"enhancer record: mod_step {rec.mod_step} out of range")
    flags = rec.mod_step << _STEP_SHIFT
    out = bytearray(struct.pack("<HB", rec.model_tag, rec.t_level))
    if rec.levels is None:
        out.append(flags)
        return bytes(out)
    levels = np.asarray(rec.levels, dtype=np.int64)
    if levels.size == 0 or np.abs(levels).max() > MOD_MAX or not 1 <= rec.scale_code <= 255:
        raise ValueError("enhancer record: modulation levels or scale out of range")
    out.append(flags | _FLAG_MOD)
    out.append(rec.scale_code)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(levels.astype(np.int32), _MODEL, *_coder_args(levels.size, rec.scale_code))
    body = enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0")
    if not body:
        body = b"\0"  # length is at least 1 so a record always holds its body
    out += write_varint(len(body)) + body
    return bytes(out)


def decode_record(data: bytes, n_mod: int) -> EnhancerRecord:
    """Parse a record whose modulation (if any) has ``n_mod`` values; raises BitstreamError."""
    if len(data) < 4:
        raise BitstreamError(f"{WHAT}: {len(data)} bytes is too short (at least 4)")
    tag, t_level, flags = struct.unpack_from("<HBB", data, 0)
    if flags & ~_FLAGS_USED:
        raise BitstreamError(f"{WHAT}: unknown flag bits {flags:#04x} at byte 3")
    step = (flags & _STEP_MASK) >> _STEP_SHIFT
    if step >= len(MOD_STEPS):
        raise BitstreamError(f"{WHAT}: modulation step index {step} out of range at byte 3")
    if not flags & _FLAG_MOD:
        if len(data) != 4:
            raise BitstreamError(f"{WHAT}: {len(data) - 4} unexpected bytes after byte 4")
        return EnhancerRecord(tag, t_level, step)
    if len(data) < 6:
        raise BitstreamError(f"{WHAT}: modulation header truncated at byte 4")
    scale_code = data[4]
    if scale_code == 0:
        raise BitstreamError(f"{WHAT}: zero modulation scale at byte 4")
    length, pos = read_varint(data, 5, WHAT)
    if not 1 <= length <= MAX_MOD_BYTES or pos + length != len(data):
        raise BitstreamError(
            f"{WHAT}: modulation body claims {length} bytes at byte {pos}, "
            f"{len(data) - pos} present (1..{MAX_MOD_BYTES})"
        )
    raw = data[pos:].rstrip(b"\0")
    raw += b"\0" * (-len(raw) % 4)
    try:
        dec = constriction.stream.queue.RangeDecoder(
            np.frombuffer(raw, dtype="<u4").astype(np.uint32)
        )
        levels = np.asarray(dec.decode(_MODEL, *_coder_args(n_mod, scale_code)), dtype=np.int64)
        exhausted = dec.maybe_exhausted()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # constriction raises AssertionError or a pyo3 PanicException
        raise BitstreamError(f"{WHAT}: invalid range-coded modulation ({exc})") from exc
    if not exhausted:
        raise BitstreamError(f"{WHAT}: modulation body has data past its {n_mod} values")
    return EnhancerRecord(tag, t_level, step, scale_code, tuple(int(v) for v in levels))
