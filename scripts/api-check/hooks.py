"""Schemathesis hooks for scripts/api-check.sh.

- Membership routes get member ids of 1000 and up, so a generated request can never remove,
  promote or re-address one of the cluster's own three members (it still runs the route and
  its answers are still checked: 404 for unknown members, 200 for a new mirror).
- Every request that may have changed a key is logged (JSON lines, $MIRRORKV_API_CHECK_LOG), so
  readback.py can read back each acknowledged write afterwards.
"""
import json
import os
from urllib.parse import urlsplit

import schemathesis

LOG_PATH = os.environ["MIRRORKV_API_CHECK_LOG"]
FIRST_SAFE_MEMBER_ID = 1000


def _safe_member_id(value):
    """Ids below 1000 (numbers, or text the server would read as one) moved up by 1000."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value < FIRST_SAFE_MEMBER_ID:
        return value + FIRST_SAFE_MEMBER_ID
    if isinstance(value, str) and value.strip().isdigit() and int(value) < FIRST_SAFE_MEMBER_ID:
        return str(int(value) + FIRST_SAFE_MEMBER_ID)
    return value


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    path = case.operation.path
    if path.startswith("/v1/cluster/members"):
        if case.path_parameters and "id" in case.path_parameters:
            case.path_parameters["id"] = _safe_member_id(case.path_parameters["id"])
        if isinstance(case.body, dict) and "id" in case.body:
            case.body["id"] = _safe_member_id(case.body["id"])


def _log(record):
    with open(LOG_PATH, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


@schemathesis.hook
def after_call(ctx, case, response):
    method = case.operation.method.upper()
    path = case.operation.path
    if method == "GET" or not (path.startswith("/v1/kv") or path.startswith("/v1/txn") or path.startswith("/v1/lease")):
        return
    request = response.request
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    url = urlsplit(request.url)
    _log(
        {
            "method": method,
            "operation": path,
            "path": url.path,
            "query": url.query,
            "status": response.status_code,
            "body_hex": (body or b"").hex(),
            "answer": response.text[:2000] if response.status_code == 200 else None,
        }
    )


def _query(case):
    return case.query or {}


@schemathesis.check
def no_server_fault(ctx, response, case):
    """No 5xx, but for the two the contract (shared/API.md) prescribes for a request that asks
    for what this node cannot give yet: `503 stale_read` for `max_staleness_ms`, and
    `504 timeout` for a `min_index` not applied within the request timeout."""
    if response.status_code < 500:
        return True
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - any other answer is a fault
        code = None
    query = _query(case)
    if response.status_code == 503 and code == "stale_read" and "max_staleness_ms" in query:
        return True
    if response.status_code == 504 and code == "timeout" and "min_index" in query:
        return True
    raise AssertionError(f"server error {response.status_code} {response.text[:300]}")
