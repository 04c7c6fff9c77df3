"""Which failed requests are worth sending again.

One rule for every client of this project, applied by :mod:`mmtrt.serving.client` (so by
`mmtrt infer`, `mmtrt evaluate`, the load generator of `mmtrt bench` and the soak alike): a request
is sent again only when the failure is **transient**, i.e. the same request can succeed later or on
another server:

- the server could not be reached or dropped the connection (refused, reset, closed mid-response,
  a client-side time-out);
- HTTP 5xx (and 408 / 429), gRPC ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``,
  ``UNKNOWN``, ``ABORTED``: the server failed, not the request (e.g. a model's python-backend stub
  process died: ``Stub process '...' is not healthy``);
- a model reported without versions while the server stops (``has no available versions``);
- a server that answers but is not ready yet (:class:`~mmtrt.serving.errors.ServerNotReady`).

A fault of the request itself (wrong data type, shape or batch size, non-finite values, an
oversize payload, an unknown model or output) is **invalid input**: HTTP 4xx, gRPC
``INVALID_ARGUMENT`` (and the other client-side gRPC codes). It fails the same way every time,
on every server, and is never sent again.
"""

from __future__ import annotations

import http.client

from .errors import RequestError, ServerNotReady

__all__ = ["TRANSIENT", "INVALID", "OTHER", "classify", "is_transient", "is_invalid_input"]

TRANSIENT = "transient"
INVALID = "invalid"
OTHER = "other"

_TRANSIENT_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "ABORTED"}
_INVALID_GRPC = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "OUT_OF_RANGE",
    "FAILED_PRECONDITION",
    "UNIMPLEMENTED",
    "RESOURCE_EXHAUSTED",  # a message above the size limit
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}


def classify(e: BaseException) -> str:
    """``TRANSIENT``, ``INVALID`` (a fault of the request: never resend it) or ``OTHER`` (neither:
    a client-side bug or an unexpected answer, not resent either)."""
    if isinstance(e, (OSError, ConnectionError, http.client.HTTPException, ServerNotReady)):
        return TRANSIENT  # refused, reset, closed mid-response, socket time-out; models loading
    if not isinstance(e, RequestError):  # (the client turns tritonclient's errors into these)
        return OTHER
    text = str(e)
    if "Stub process" in text and "not healthy" in text:
        return TRANSIENT
    if "has no available versions" in text:  # the server unloading its models: stopping
        return TRANSIENT
    status = e.status
    if status.isdigit():  # HTTP
        code = int(status)
        if code >= 500 or code in (408, 429):
            return TRANSIENT
        if 400 <= code < 500:
            return INVALID
        return OTHER
    name = status.rsplit(".", 1)[-1]  # gRPC: "StatusCode.INVALID_ARGUMENT"
    if name in _TRANSIENT_GRPC:
        return TRANSIENT
    if name in _INVALID_GRPC:
        return INVALID
    if "Deadline Exceeded" in text or "timed out" in text.lower():
        return TRANSIENT
    return OTHER


def is_transient(e: BaseException) -> bool:
    return classify(e) == TRANSIENT


def is_invalid_input(e: BaseException) -> bool:
    return classify(e) == INVALID
