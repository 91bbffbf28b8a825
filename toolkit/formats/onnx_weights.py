"""INT4 weights for onnxruntime's ``MatMulNBits`` and the external-data file they are streamed into.

Quantization is MLC's symmetric group math (:mod:`mcpm_mobile.model.quantization`) with a configurable block::

    scale = max|w| / 7                      (float32, one per block of ``block`` inputs)
    code  = clamp(round(w / scale + 7), 0, 14) + 1      -> 1..15
    w'    = (code - 8) * scale              (MatMulNBits' default zero point is 8)

so the dequantized values are exactly MLC's ``q4f32_1`` values for ``block == 32``, and no
zero-point tensor is needed. Codes are packed two per byte, lower index in the low nibble, as
``B[N, K/block, block/2]`` (MatMulNBits' layout); a partial last block is zero padded.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto

from mcpm_mobile.kernels import mlc_group
from mcpm_mobile.model.quantization import MAX_INT, num_groups

ZERO_POINT = 8
BLOCK_SIZES = (16, 32, 64, 128, 256)
ALIGN = 4096  # page-aligned offsets let onnxruntime memory-map the weights

_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
               np.dtype(np.int64): TensorProto.INT64}


def quantize_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``w[N, K]`` -> (``B`` uint8 [N, blocks, block/2], ``scales`` float32 [N, blocks])."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    blocks = num_groups(k, block)
    if blocks * block != k:
        w = np.concatenate([w, np.zeros((n, blocks * block - k), np.float32)], axis=1)
    g = w.reshape(n, blocks, block)
    scale = np.abs(g).max(axis=2) / np.float32(MAX_INT)
    safe = np.where(scale == 0, np.float32(1), scale)
    q = np.clip(np.round(g / safe[:, :, None] + np.float32(MAX_INT)), 0, 2 * MAX_INT)
    q = np.where(scale[:, :, None] == 0, MAX_INT, q).astype(np.uint8) + np.uint8(ZERO_POINT - MAX_INT)
    return (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8), scale.astype(np.float32)


def quantize_stored(rows: np.ndarray, stored: str, block: int) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`quantize_blocks` of ``rows`` as stored on disk (BF16/F16/F32 name), by MLC's compiled group
    kernel: for ``block`` 32 the float32 math is the same, and its packed words, read as little-endian bytes,
    are the codes in this layout less 1. None when the kernel cannot run or flags a row (NaN/Inf)."""
    if block != mlc_group.GROUP or sys.byteorder != "little":
        return None
    done = mlc_group.quantize(rows, stored, "float32")
    if done is None or not done[2]:
        return None
    q, scales, _ = done
    b = q.view(np.uint8).reshape(q.shape[0], -1, block // 2)
    b += np.uint8(0x11)  # MLC's codes 0..14 -> 1..15 in both nibbles of every byte (no carry)
    return b, scales


def unpack_codes(b: np.ndarray) -> np.ndarray:
    """``B[N, blocks, block/2]`` -> codes uint8 [N, blocks * block]."""
    codes = np.stack([b & 0xF, b >> 4], axis=-1)
    return codes.reshape(b.shape[0], -1)


def dequantize_blocks(b: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`quantize_blocks` in float64: weights [N, K] as MatMulNBits sees them."""
    n, blocks = scales.shape
    codes = unpack_codes(b).astype(np.float64).reshape(n, blocks, -1) - ZERO_POINT
    return (codes * scales.astype(np.float64)[:, :, None]).reshape(n, -1)[:, :k]


class ExternalData:
    """Append tensors to one external-data file; each call returns the ``TensorProto`` that points at it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")
        self.tensors = 0

    def _start(self) -> int:
        offset = -(-self.file.tell() // ALIGN) * ALIGN
        self.file.seek(offset)
        return offset

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        return self.add_parts(name, array.dtype, array.shape, [array])

    def add_parts(self, name: str, dtype, shape, parts) -> TensorProto:
        """Write the arrays in ``parts`` back to back (C order) as one tensor of ``shape``."""
        offset = self._start()
        for part in parts:
            self.file.write(memoryview(np.ascontiguousarray(part, dtype)).cast("B"))
        length = self.file.tell() - offset
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if length != expected:
            raise ValueError(f"tensor {name}: wrote {length} bytes, shape {list(shape)} needs {expected}")
        tensor = TensorProto(name=name, dims=list(shape), data_type=_ONNX_TYPES[np.dtype(dtype)])
        for key, value in (("location", self.path.name), ("offset", offset), ("length", length)):
            tensor.external_data.add(key=key, value=str(value))
        tensor.data_location = TensorProto.EXTERNAL
        self.tensors += 1
        return tensor

    def close(self) -> int:
        """Close the file; returns its size in bytes."""
        size = self.file.tell()
        self.file.close()
        return size
