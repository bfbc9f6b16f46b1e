"""Sealed messages on a blocking socket: what a rank's doorbell and ring connections carry
once their handshake (`doorbell_guard.py`) has given them a cipher.

Each message goes as a 4-byte big-endian length and the sealed bytes (the message and
its 16-byte tag). The length is not sealed: a changed one cuts the stream in the wrong
place, and the piece then read fails its tag like any other changed byte. A length
beyond `MAX_SEALED` is refused before anything is allocated for it.
"""

from __future__ import annotations

import socket
import struct

from exo.engine.doorbell_guard import receive_exactly
from exo.link_cipher import SEAL_OVERHEAD, FrameError, LinkCipher

_LENGTH = struct.Struct("!I")
# The largest sealed message read: a relay sends at most 1 MiB at a time, and a doorbell
# message is 24 bytes and the cache operations of one pass (a few KiB).
MAX_SEALED = 1 << 26


def send_sealed(sock: socket.socket, cipher: LinkCipher, message: bytes | memoryview) -> None:
    sealed = cipher.seal(message)
    sock.sendall(_LENGTH.pack(len(sealed)) + sealed)


def receive_sealed(sock: socket.socket, cipher: LinkCipher) -> bytes | None:
    """The next message; None when the connection ends (or breaks) first; `FrameError`
    for one that does not open."""
    header = receive_exactly(sock, _LENGTH.size)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    if not SEAL_OVERHEAD <= size <= MAX_SEALED:
        raise FrameError(f"a sealed message of {size} bytes (damaged, or not from a rank)")
    sealed = receive_exactly(sock, size)
    if sealed is None:
        return None
    return cipher.open(sealed)
