"""Conditional requests for the tagged endpoints (``/explain/{method}``, ``/localize``): ``If-None-Match`` in,
``ETag`` / ``X-Cache`` / ``304 Not Modified`` out. The handlers decide (:class:`~service.handlers.Conditional`);
this module only speaks HTTP.

``If-None-Match`` is parsed as RFC 9110 §13.1.2 defines it: ``*`` or a comma-separated list of entity tags, weak
(``W/"…"``) or strong, over any number of header lines; the comparison is weak. A field value that does not parse is
ignored as a whole (the request is answered as if unconditional): a full answer is always correct, a wrong 304 never.

RFC 9110 prescribes 304 for GET and HEAD and 412 for other methods whose condition fails. These POSTs are safe,
idempotent queries whose body is the query (what the HTTP QUERY method standardises), so they follow the GET rule:
304 tells the client that the copy it holds is the answer, where a 412 would read as a failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from fastapi import Header, Response

from ..handlers import Conditional, HeldTags

__all__ = ["CONDITIONAL_RESPONSES", "IfNoneMatch", "answer", "parse_if_none_match"]

T = TypeVar("T")

# One list member: optional whitespace, an entity-tag or nothing (empty members are allowed, RFC 9110 §5.6.1), optional
# whitespace, then a comma or the end. entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
# (RFC 9110 §8.8.3): a comma may sit inside the quotes, so the list is scanned, not split.
_MEMBER = re.compile(r'[ \t]*(?:(?:W/)?("[\x21\x23-\x7e\x80-\xff]*"))?[ \t]*(,|\Z)')

_IF_NONE_MATCH_DESCRIPTION = ("Entity tags of responses the client holds (from ETag), or *: when one matches (weak "
                              "comparison), the answer is 304 Not Modified with no body.")

#: The route parameter that documents ``If-None-Match`` (the route parses every line of it with
#: :func:`parse_if_none_match`, not only the first, which is all a header parameter sees).
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", description=_IF_NONE_MATCH_DESCRIPTION)]

_ETAG_HEADER = {"description": "Weak entity tag of this answer (the maps' key plus the rendering options); send it "
                "back in If-None-Match to get 304 Not Modified. Absent when DICOM outputs are asked for: they hold "
                "new UIDs in every answer, so such a request is never answered 304.",
                "required": False, "schema": {"type": "string", "pattern": '^W/"[0-9a-f]+"$'}}
_X_CACHE_HEADER = {"description": "hit: the maps came from the result cache (no model work); miss: they were computed.",
                   "required": True, "schema": {"type": "string", "enum": ["hit", "miss"]}}

#: OpenAPI ``responses`` entries of a tagged endpoint: the headers of its 200, and its 304.
CONDITIONAL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Successful Response", "headers": {"ETag": _ETAG_HEADER, "X-Cache": _X_CACHE_HEADER}},
    304: {"description": "Not Modified: If-None-Match matched this answer's entity tag (no body).",
          "headers": {"ETag": {**_ETAG_HEADER, "required": True}}},
}


def parse_if_none_match(values: Iterable[str]) -> HeldTags | None:
    """The tags of every ``If-None-Match`` line (combined as one list), or None when there is none or the field
    value does not parse."""
    text = ", ".join(values)
    if not text.strip(" \t,"):
        return None
    if text.strip(" \t") == "*":
        return HeldTags(any=True)
    opaque: set[str] = set()
    position = 0
    while True:
        member = _MEMBER.match(text, position)
        if member is None:
            return None
        if member.group(1):
            opaque.add(member.group(1))
        if not member.group(2):  # the end of the field value
            break
        position = member.end()
    return HeldTags(opaque=frozenset(opaque)) if opaque else None


def answer(result: Conditional[T], response: Response) -> T | Response:
    """304 with the ETag and no body, or the body with ``ETag`` (when the answer has one: not with DICOM results)
    and ``X-Cache`` set on the route's response."""
    if result.not_modified:
        assert result.etag is not None, "only a tagged answer is ever not modified"
        return Response(status_code=304, headers={"ETag": result.etag})
    if result.etag is not None:
        response.headers["ETag"] = result.etag
    response.headers["X-Cache"] = "hit" if result.cache_hit else "miss"
    assert result.body is not None
    return result.body
