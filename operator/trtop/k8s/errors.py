"""What an API failure means for a ModelDeployment: a person must act, or trtop retries.

Called by the reconcile shell (``trtop.handlers.modeldeployment``). A 4xx the API server
answers for an object trtop made (422 Invalid, 400, 403 Forbidden...) will fail the same
way every time: it becomes ``Stalled`` with the server's own message and causes. Timeouts,
connection errors, 5xx, 429 and conflicts are transient: retried with backoff, the reason
in ``Reconciling``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class Failure:
    reason: str  # condition reason: ApplyRejected, NotOwned, APIUnavailable, StoreUnavailable, ...
    message: str  # for people: what happened and what to do
    stalled: bool  # a person must act; False: trtop retries with backoff


def from_api_exception(e: ApiException, doing: str) -> Failure:
    status = int(e.status or 0)
    text = _server_message(e)
    if 400 <= status < 500 and status not in TRANSIENT_STATUSES:
        return Failure("ApplyRejected", f"the API server refused {doing} (HTTP {status}): {text}"[:2048], True)
    return Failure("APIUnavailable", f"{doing} failed (HTTP {status or '-'} {e.reason or ''}): {text}; "
                   "retrying with backoff"[:2048], False)


def from_transport_error(e: BaseException, doing: str) -> Failure:
    return Failure("APIUnavailable", f"{doing} failed ({type(e).__name__}: {str(e)[:300]}); retrying with backoff",
                   False)


def _server_message(e: ApiException) -> str:
    """The Status object's message plus each cause (field: message), as the server wrote them."""
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return str(e.body or e.reason or "")[:1000]
    if not isinstance(body, dict):
        return str(body)[:1000]
    message = str(body.get("message") or e.reason or "")
    causes = (body.get("details") or {}).get("causes") or []
    extra = [f"{c.get('field', '')}: {c.get('message', '')}".strip(": ") for c in causes
             if isinstance(c, dict) and c.get("message") and str(c.get("message")) not in message]
    return "; ".join([message, *extra])[:1500]
