"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature`.

What is signed is `"<webhook-id>.<webhook-timestamp>.<body>"`, with HMAC-SHA256 under the endpoint's secret; the
signature header is `v1,<base64>` (https://www.standardwebhooks.com, "Signature scheme"). The id stays the same
on every attempt of one delivery (receivers deduplicate on it); the timestamp is the attempt's own, since
receivers refuse a timestamp more than five minutes away from their clock, and a retry may come an hour later.

Secrets: `whsec_<base64>` is the spec's form (the key is the decoded bytes); any other string is used as its
own UTF-8 bytes, so a plain passphrase works too. A receiver using the standardwebhooks package takes the
`whsec_` form as is, and a plain secret as bytes (`Webhook(secret.encode())`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = ["SECRET_PREFIX", "new_message_id", "parse_secret", "sign", "signed_headers"]

SECRET_PREFIX = "whsec_"


def parse_secret(text: str) -> bytes:
    """The HMAC key a configured secret stands for; ValueError for an empty or undecodable one."""
    if text.startswith(SECRET_PREFIX):
        encoded = text[len(SECRET_PREFIX) :]
        try:
            # Unpadded base64 is common in the wild (the reference libraries pad before decoding too).
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ webhook secret must be base64 after the prefix") from None
    else:
        key = text.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def new_message_id() -> str:
    """A fresh `webhook-id`: `msg_` and 128 random bits, also safe as a file name."""
    return "msg_" + secrets.token_hex(16)


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`."""
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }
