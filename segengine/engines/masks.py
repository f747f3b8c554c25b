"""Boolean masks to Roaring bitmaps and back, through Roaring's portable serialization.

Going row by row (`np.flatnonzero` then a bitmap of the rows, or scattering a bitmap's
rows into a mask) costs a few nanoseconds per row: ~6 ms for 400,000 rows of a million.
A Roaring bitmap splits the rows into chunks of 65,536, and a chunk holding more than
4,096 rows is a plain bitset of 8 KiB, bit for bit `np.packbits(mask, bitorder="little")`.
So a mask becomes the bytes of the portable format (a header, then per chunk its bitset
or, when sparse, its sorted 16-bit values) that `BitMap.deserialize` reads in one go,
and a bitmap's serialization is unpacked into a mask: about 0.1 ms per million contacts
either way. The format is specified at https://github.com/RoaringBitmap/RoaringFormatSpec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyroaring import BitMap

from ..lazy import numpy_on_first_use

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy_on_first_use(globals())

CHUNK = 1 << 16  # rows per container
CHUNK_BYTES = CHUNK // 8
#: a container with more rows than this is a bitset, else an array of 16-bit values
ARRAY_MAX = 4096
COOKIE_NO_RUNS = 12346
COOKIE_RUNS = 12347
#: with run containers, the offset header is present only from this many containers on
NO_OFFSET_THRESHOLD = 4


def mask_to_bitmap(mask: np.ndarray) -> BitMap:
    """The rows where `mask` is True, as a bitmap (exactly `BitMap(np.flatnonzero(mask))`)."""
    n = len(mask)
    chunks = -(-n // CHUNK)
    packed = np.zeros(chunks * CHUNK_BYTES, dtype=np.uint8)
    packed[: -(-n // 8)] = np.packbits(mask, bitorder="little")
    words = packed.view(np.uint64).reshape(chunks, CHUNK_BYTES // 8)
    cards = np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    keys = np.flatnonzero(cards)
    if len(keys) == 0:
        return BitMap()
    bodies: list[bytes] = []
    for key in keys.tolist():
        if cards[key] > ARRAY_MAX:
            bodies.append(packed[key * CHUNK_BYTES : (key + 1) * CHUNK_BYTES].tobytes())
        else:
            part = mask[key * CHUNK : (key + 1) * CHUNK]
            bodies.append(np.flatnonzero(part).astype("<u2").tobytes())
    size = len(keys)
    header = np.empty(2 + size, dtype="<u4")
    header[0], header[1] = COOKIE_NO_RUNS, size
    header[2:] = (keys.astype(np.uint32)) | ((cards[keys] - 1).astype(np.uint32) << 16)
    offsets = np.empty(size, dtype="<u4")
    start = 4 * len(header) + 4 * size
    lengths = np.array([len(b) for b in bodies], dtype=np.int64)
    offsets[:] = start + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return BitMap.deserialize(header.tobytes() + offsets.tobytes() + b"".join(bodies))


def bitmap_to_mask(bitmap: BitMap, n: int) -> np.ndarray:
    """A mask of `n` rows, True at the bitmap's rows (every row must be below `n`)."""
    data = memoryview(bitmap.serialize())
    mask = np.zeros(-(-n // CHUNK) * CHUNK, dtype=bool)
    cookie = int.from_bytes(data[:4], "little")
    if cookie & 0xFFFF == COOKIE_RUNS:
        size = (cookie >> 16) + 1
        run_flags = np.unpackbits(
            np.frombuffer(data, np.uint8, (size + 7) // 8, 4), bitorder="little"
        )[:size].astype(bool)
        at = 4 + (size + 7) // 8
        has_offsets = size >= NO_OFFSET_THRESHOLD
    elif cookie == COOKIE_NO_RUNS:
        size = int.from_bytes(data[4:8], "little")
        run_flags = np.zeros(size, dtype=bool)
        at = 8
        has_offsets = True
    else:
        raise ValueError(f"not a Roaring serialization (cookie {cookie})")
    described = np.frombuffer(data, "<u2", 2 * size, at).reshape(size, 2)
    at += 4 * size + (4 * size if has_offsets else 0)
    for i in range(size):
        key, card = int(described[i, 0]), int(described[i, 1]) + 1
        base = key * CHUNK
        if run_flags[i]:
            count = int.from_bytes(data[at : at + 2], "little")
            pairs = np.frombuffer(data, "<u2", 2 * count, at + 2).reshape(count, 2).astype(np.int64)
            at += 2 + 4 * count
            edges = np.zeros(CHUNK + 1, dtype=np.int32)
            np.add.at(edges, pairs[:, 0], 1)
            np.add.at(edges, pairs[:, 0] + pairs[:, 1] + 1, -1)
            mask[base : base + CHUNK] = np.cumsum(edges[:CHUNK]) > 0
        elif card > ARRAY_MAX:
            bits = np.frombuffer(data, np.uint8, CHUNK_BYTES, at)
            mask[base : base + CHUNK] = np.unpackbits(bits, bitorder="little").view(bool)
            at += CHUNK_BYTES
        else:
            values = np.frombuffer(data, "<u2", card, at)
            mask[base + values.astype(np.int64)] = True
            at += 2 * card
    return mask[:n]
