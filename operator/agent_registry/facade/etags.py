"""Entity tags on list answers, so a client that polls gets ``304 Not Modified`` (no body)
while the answer has not changed.

The tag is a digest of the answer's bytes: strong, and the same from every replica for the
same answer, with no version bookkeeping to keep right.
"""

from __future__ import annotations

from hashlib import blake2b

JSON = b"application/json"


def tag(body: bytes) -> str:
    return '"' + blake2b(body, digest_size=12).hexdigest() + '"'


def matches(if_none_match: str | None, current: str) -> bool:
    """Whether an ``If-None-Match`` header names the current tag (weak comparison, RFC 9110)."""
    if not if_none_match:
        return False
    candidates = (part.strip() for part in if_none_match.split(","))
    return any(candidate == "*" or candidate.removeprefix("W/") == current for candidate in candidates)


def list_answer(body: bytes, if_none_match: str | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers of a list answer: 200 with its tag, or 304 when the client has it."""
    return tagged_answer(body, tag(body), if_none_match)


def tagged_answer(body: bytes, current: str, if_none_match: str | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """As ``list_answer``, for a body whose tag is known already (an agent card's is its content hash)."""
    headers = [(b"etag", current.encode())]
    if matches(if_none_match, current):
        return 304, b"", headers
    return 200, body, [(b"content-type", JSON), *headers]
