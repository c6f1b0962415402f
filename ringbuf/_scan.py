"""The reader's frame scanners: tight loops over one contiguous segment of a ring.

Per frame one ``unpack_from``, one combined test (the frame lies inside the
segment, ``length <= max_record_bytes``, ``seq`` is the next expected one,
the check word is TAG or, with checksums, the CRC-32 of the payload) and one
``mmap`` slice to ``bytes``. The first frame a loop does not take stops it
with ``_STOP_ODD``; :class:`ringbuf._reader.RingReader` classifies it.

The flusher reads with ``RingReader.read_packed``: the same frames, handed
on as msgpack bins (what ``msgpack.packb`` writes for a list element of
bytes) concatenated into one bytes object per segment, which a stream
entry's ``recs`` array takes as it is. :data:`scan_packed` is the native
scanner that does it with one copy per record and no object per record
(``ringbuf._cread``, ringbuf/_cread.c; TAG rings on the native path); else
:func:`pack_bins` builds the same bytes from what ``_scan_tagged`` or
``_scan_crc`` took (the reference).
"""

from __future__ import annotations

import mmap
import struct
import zlib
from itertools import chain

from ._layout import FRAME_HEADER, TAG

try:
    from ._cread import scan_packed  # type: ignore[import-not-found]
except ImportError:  # not built: no compiler at install time
    scan_packed = None

_FRAME_UNPACK = FRAME_HEADER.unpack_from

_STOP_DONE = 0  # max_records or max_bytes reached
_STOP_END = 1  # reached the end of the segment
_STOP_ODD = 2  # a frame the fast loop does not take: padding or corruption


def _scan_tagged(mm: mmap.mmap, off: int, seg_end: int, seq: int, count: int, nbytes: int,
                 budget: int, limit: int, nonempty: bool,
                 append) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """Append up to ``count`` frames in ``[off, seg_end)``; the TAG variant.

    Returns ``(off, seq, nbytes, why)``. Past ``budget`` payload bytes the
    loop stops, unless the batch would otherwise be empty (``nonempty`` says
    whether the caller already holds records). A frame is taken only if it lies
    wholly inside the segment, its length is at most ``limit``, its check
    word is TAG and its sequence number is the expected one; anything else
    stops the loop with ``_STOP_ODD`` for the caller to classify.
    """
    unpack = _FRAME_UNPACK
    start = off
    for _ in range(count):
        try:
            length, check, fseq = unpack(mm, off)
        except struct.error:  # 8 bytes before the end: only padding fits there
            return off, seq, nbytes, _STOP_ODD
        end = off + 16 + ((length + 7) & -8)
        if end > seg_end or length > limit or fseq != seq or check != TAG:
            return off, seq, nbytes, _STOP_ODD
        if nbytes + length > budget and (nonempty or off != start):
            return off, seq, nbytes, _STOP_DONE
        append(mm[off + 16:off + 16 + length])
        nbytes += length
        seq += 1
        off = end
        if end == seg_end:
            return off, seq, nbytes, _STOP_END
    return off, seq, nbytes, _STOP_DONE


def _scan_crc(mm: mmap.mmap, off: int, seg_end: int, seq: int, count: int, nbytes: int,
              budget: int, limit: int, nonempty: bool,
              append) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """Like :func:`_scan_tagged` for rings whose check word is a CRC-32."""
    unpack = _FRAME_UNPACK
    start = off
    crc32 = zlib.crc32
    for _ in range(count):
        try:
            length, check, fseq = unpack(mm, off)
        except struct.error:
            return off, seq, nbytes, _STOP_ODD
        end = off + 16 + ((length + 7) & -8)
        if end > seg_end or length > limit or fseq != seq:
            return off, seq, nbytes, _STOP_ODD
        payload = mm[off + 16:off + 16 + length]
        if crc32(payload) != check:
            return off, seq, nbytes, _STOP_ODD
        if nbytes + length > budget and (nonempty or off != start):
            return off, seq, nbytes, _STOP_DONE
        append(payload)
        nbytes += length
        seq += 1
        off = end
        if end == seg_end:
            return off, seq, nbytes, _STOP_END
    return off, seq, nbytes, _STOP_DONE


_BIN16 = struct.Struct(">BH").pack
_BIN32 = struct.Struct(">BI").pack


def bin_header(n: int) -> bytes:
    """The msgpack bin header of an ``n``-byte string (bin8, bin16 or bin32)."""
    if n < 256:
        return bytes((0xC4, n))
    if n < 65536:
        return _BIN16(0xC5, n)
    return _BIN32(0xC6, n)


class _BinHeaders(dict):  # type: ignore[type-arg]
    """bin_header(n) by n, made on first use (the lookups run in C)."""

    def __missing__(self, n: int) -> bytes:
        h = self[n] = bin_header(n)
        return h


_HEADERS = _BinHeaders()


def pack_bins(payloads: list[bytes]) -> bytes:
    """``payloads`` as consecutive msgpack bins in one bytes object: the pure
    ``read_packed``, what :data:`scan_packed` makes from the frames."""
    if len(_HEADERS) > 4096:  # bounded, whatever sizes come
        _HEADERS.clear()
    return b"".join(chain.from_iterable(zip(map(_HEADERS.__getitem__, map(len, payloads)),
                                            payloads, strict=True)))
