"""The cipher of a live link: every frame sealed with ChaCha20-Poly1305.

Used by the peer links between nodes (`exo/actors/link_auth.py`, `links.py`) and by the
doorbell and ring connections between an instance's ranks (`exo/engine/doorbell_guard.py`),
so it sits below both layers.

A link's handshake ends with an X25519 shared secret that only its two ends know.
HKDF-SHA256 extracts a key from it with the cluster secret (for ranks: the instance key)
as the salt, and expands that, with the handshake's transcript (both ends' ids, nonces
and ephemeral keys) as the context, into two 32-byte keys: one for the frames the dialer
sends, one for the listener's. The nonce of each frame is its number in its direction
(96 bits: four zero bytes and a 64-bit little-endian counter), never sent: the receiver
counts too, so a frame that is damaged, forged, replayed, dropped or reordered fails its
tag, and the link is closed (`FrameError`).
"""

from __future__ import annotations

from attrs import define, field
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
# What sealing adds to a frame: the Poly1305 tag.
SEAL_OVERHEAD = 16
# A direction's counter must never wrap: its nonce would repeat under the same key.
_COUNTER_LIMIT = 2**64
_CONTEXT = b"exo link v1 keys|"


class FrameError(Exception):
    """A frame that does not open: damaged, forged, replayed or out of order."""


@define
class _Direction:
    """One direction's key and the number of the next frame in it."""

    aead: ChaCha20Poly1305
    counter: int = 0

    def next_nonce(self) -> bytes:
        if self.counter >= _COUNTER_LIMIT:
            raise FrameError("2^64 frames in one direction: the link must be opened again")
        nonce = b"\0\0\0\0" + self.counter.to_bytes(8, "little")
        self.counter += 1
        return nonce


@define
class LinkCipher:
    """One end's keys: it seals with one and opens with the other. A link's writer task
    is the only one to seal, its reader the only one to open, so each counter moves in
    the order the frames cross the wire."""

    _sending: _Direction = field(alias="sending")
    _receiving: _Direction = field(alias="receiving")

    def seal(self, frame: bytes | bytearray | memoryview) -> bytes:
        return self._sending.aead.encrypt(self._sending.next_nonce(), frame, None)

    def open(self, sealed: bytes | bytearray | memoryview) -> bytes:
        """The frame, or `FrameError`; after one the link is done (the counter has moved)."""
        try:
            return self._receiving.aead.decrypt(self._receiving.next_nonce(), sealed, None)
        except InvalidTag:
            raise FrameError(
                f"frame {self._receiving.counter - 1} failed its integrity check "
                "(damaged, forged, replayed or out of order)"
            ) from None


def link_cipher(shared: bytes, secret: bytes, transcript: bytes, *, dialer: bool) -> LinkCipher:
    """One end's cipher, from the X25519 shared secret, the cluster secret and the
    handshake transcript: both ends derive the same two keys and take opposite ones."""
    keys = HKDF(SHA256(), 2 * KEY_BYTES, salt=secret, info=_CONTEXT + transcript).derive(shared)
    dialer_sends = _Direction(ChaCha20Poly1305(keys[:KEY_BYTES]))
    listener_sends = _Direction(ChaCha20Poly1305(keys[KEY_BYTES:]))
    if dialer:
        return LinkCipher(sending=dialer_sends, receiving=listener_sends)
    return LinkCipher(sending=listener_sends, receiving=dialer_sends)
