"""Label Studio's brush RLE, encoded with numpy: the same bytes as label-studio-sdk's `mask2rle`.

The SDK builds the bit string run by run in Python (about 8 us per run: 30 ms for a mask of 4000 runs,
as much as a click's whole decoder); this packs the same codes with array operations. The format (the
rle-pack of Label Studio's front end): a 32-bit length of the RGBA array, 5 bits word size - 1, four
4-bit run-size classes - 1 (3, 4, 8, 16), then per run a flag (0 single, 1 series), a 2-bit class, the
length - 1 in that class's bits and the 8-bit value; runs longer than 65536 are split; zero bits pad
to whole bytes (a whole zero byte when already aligned, as the SDK does).
"""

from __future__ import annotations

import numpy as np

HEADER = f"{0:032b}{8 - 1:05b}" + "".join(f"{size - 1:04b}" for size in (3, 4, 8, 16))
LONGEST = 1 << 16


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The bits (MSB first) of each value in its width, concatenated."""
    top = int(widths.max()) if len(widths) else 0
    shifts = widths[:, None] - 1 - np.arange(top)[None, :]
    valid = shifts >= 0
    bits = (values[:, None] >> np.where(valid, shifts, 0)) & 1
    return bits[valid].astype(np.uint8)


def encode(mask: np.ndarray) -> list[int]:
    """Brush RLE of a 2-D mask: any truthy pixel is inside (value 255 in all four RGBA channels)."""
    flat = np.asarray(mask, bool).ravel()
    total = 4 * flat.size
    if flat.size:
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate(([0], edges))
        lengths = 4 * np.diff(np.concatenate((starts, [flat.size]))).astype(np.int64)
        values = np.where(flat[starts], 255, 0).astype(np.int64)
    else:
        lengths = values = np.zeros(0, np.int64)
    # Runs longer than 65536 become ceil(L / 65536) chunks: full ones, then the rest.
    chunks = np.where(lengths > 256, -(-lengths // LONGEST), 1)
    run_of_chunk = np.repeat(np.arange(len(lengths)), chunks)
    first = np.cumsum(chunks) - chunks
    index_in_run = np.arange(len(run_of_chunk)) - first[run_of_chunk]
    last = index_in_run == chunks[run_of_chunk] - 1
    length = np.where(last, lengths[run_of_chunk] - LONGEST * index_in_run, LONGEST)
    value = values[run_of_chunk]
    big = lengths[run_of_chunk] > 256
    # (flag + class) bits and the length field's width, per size class
    single = length == 1
    klass = np.select([single, length <= 8, length <= 16, ~big], [0, 0, 1, 2], 3)
    width = np.array([3, 4, 8, 16])[klass]
    prefix = np.where(single, 0, 4 + klass)  # 3 bits: flag then class
    field = np.where(single, 0, length - 1)
    codes = ((prefix << width) | field) << 8 | value
    body = _bits(codes, 3 + width + 8)
    header = np.frombuffer(f"{total:032b}{HEADER[32:]}".encode(), np.uint8) - ord("0")
    stream = np.concatenate((header, body))
    stream = np.concatenate((stream, np.zeros(8 - len(stream) % 8, np.uint8)))
    return np.packbits(stream).tolist()
