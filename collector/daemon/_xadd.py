"""The one Redis round trip a batch costs: ``XADD`` pipelined with ``XLEN``.

The command is packed here rather than by redis-py: its packer copies a
large value slowly (about 1.5 ms per 500 KB with hiredis), which would cost
more than everything else the flusher does. A value over 16 KiB (the
batch's blob) is handed to the socket as it is, never copied.
"""

from __future__ import annotations

from typing import Any

_COPY_LIMIT = 16384  # larger values go to the socket as their own chunk


def pack_xadd_xlen(key: bytes, fields: dict[str, bytes]) -> list[bytes]:
    """``XADD key * field value ...`` then ``XLEN key``, as RESP chunks for one send."""
    items = [b"XADD", key, b"*"]
    for k, v in fields.items():
        items.append(k.encode())
        items.append(v)
    head = [b"*%d\r\n" % len(items)]
    chunks: list[bytes] = []
    for item in items:
        if len(item) > _COPY_LIMIT:
            head.append(b"$%d\r\n" % len(item))
            chunks.append(b"".join(head))
            chunks.append(item)
            head = [b"\r\n"]
        else:
            head.append(b"$%d\r\n%s\r\n" % (len(item), item))
    head.append(b"*2\r\n$4\r\nXLEN\r\n$%d\r\n%s\r\n" % (len(key), key))
    chunks.append(b"".join(head))
    return chunks


def xadd_xlen(conn: Any, key: bytes, fields: dict[str, bytes]) -> int:
    """Add one entry to stream ``key`` on redis-py connection ``conn``; return the length.

    On any error the connection is dropped (its state is unknown); the next
    call reconnects.
    """
    chunks = pack_xadd_xlen(key, fields)
    try:
        conn.send_packed_command(chunks, check_health=False)
        conn.read_response()  # the entry id
        return int(conn.read_response())
    except BaseException:
        conn.disconnect()
        raise
