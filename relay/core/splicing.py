"""Whether a request body may bypass the relay's user space (spliced socket to socket): one pure decision.

Theory of operation
-------------------
The relay inspects every body byte: counts it, parses multipart, hashes it, checks an RFC 9530 digest. When none
of that needs the bytes themselves, the kernel can move them from the client's socket to the upstream's through a
pipe (`os.splice`, relay/zerocopy.py) and the relay only counts what moved. This module says when that is so, from
what is known once the headers are in; the I/O side adds what only it can see (TLS on either side, the body
already buffered whole).

Rules, all of which must hold:

1. The body is declared by Content-Length and is at least `SPLICE_MIN` bytes. A chunked body must be de-chunked
   (the relay re-frames it for the upstream), and a small body is cheaper to copy than to set a pipe up for.
   Content-Length also gives the exact count to move: the splice never reads past the body.
2. Nothing looks at the bytes but a sha256 of the whole body: not multipart (no parts, no per-file limits), no
   `Content-Digest` / `Repr-Digest` to verify (the relay must hold the body's last bytes back until the digest
   matches, and a splice has no last bytes to hold). `--max-body-size` needs no bytes: a declared length over it
   was refused from the headers already.
3. The sha256 (the default `--digest sha256`) only where the kernel can copy the body for a hash thread
   (`tee`: tee(2), relay/pipehash.py); else the body is copied through the relay as before.
"""

from __future__ import annotations

__all__ = ["SPLICE_MIN", "may_splice"]

# Below this a body is copied as usual: a pipe, two dup()ed descriptors and their poll registrations cost more
# than copying 1 MiB, and small uploads keep their keep-alive connection (a spliced request closes it).
SPLICE_MIN = 1024 * 1024


def may_splice(
    *, content_length: int | None, digest: bool, multipart: bool, digest_fields: bool, tee: bool = False
) -> bool:
    """True when the body may go socket to socket (the rules in the module docstring)."""
    if content_length is None or content_length < SPLICE_MIN:
        return False
    return not (multipart or digest_fields or (digest and not tee))
