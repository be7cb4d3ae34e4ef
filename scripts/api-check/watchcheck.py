"""Check GET /v1/watch against the OpenAPI document (scripts/api-check.sh).

Schemathesis reads whole bodies, and a watch stream never ends, so the watch route is checked
here instead: a stream in each format (NDJSON and SSE) is opened on a fresh prefix, keys are
written and deleted under it, and every line read (changes and progress notices, until the
writes are all seen, and a progress notice, or DEADLINE_S passes) must validate against the document's `WatchLine`
schema; a watch without a filter must be a 400 that validates against `ErrorBody`.
Exit 0 when all hold, 1 otherwise.

Usage: watchcheck.py SPEC CA CERT KEY TOKEN ENDPOINT
"""
import http.client
import json
import ssl
import sys
import time
import uuid

import jsonschema

DEADLINE_S = 20
WRITES = 5


def validator(spec, name):
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def connect(context, endpoint):
    host, port = endpoint.rsplit(":", 1)
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=DEADLINE_S)


def request(context, token, endpoint, method, path, body=None, accept=None):
    connection = connect(context, endpoint)
    headers = {"Authorization": f"Bearer {token}"}
    if accept:
        headers["Accept"] = accept
    connection.request(method, path, body=body, headers=headers)
    return connection.getresponse()


def check_stream(spec, context, token, endpoint, accept):
    line_schema = validator(spec, "WatchLine")
    prefix = f"watchcheck/{uuid.uuid4().hex}/"
    stream = request(context, token, endpoint, "GET", f"/v1/watch?prefix={prefix}", accept=accept)
    want_type = accept or "application/x-ndjson"
    got_type = stream.getheader("Content-Type", "")
    problems = []
    if stream.status != 200 or not got_type.startswith(want_type):
        return [f"{want_type}: answered {stream.status} {got_type}"]
    for n in range(WRITES):
        request(context, token, endpoint, "PUT", f"/v1/kv/{prefix}{n}", body=f"v{n}").read()
    request(context, token, endpoint, "DELETE", f"/v1/kv/{prefix}0").read()
    changes, progress, deadline = 0, 0, time.monotonic() + DEADLINE_S
    while (changes < WRITES + 1 or progress < 1) and time.monotonic() < deadline:
        raw = stream.readline().decode().strip()
        if not raw or raw.startswith("id:"):
            continue
        text = raw.removeprefix("data: ") if accept else raw
        line = json.loads(text)
        if not isinstance(line, dict):
            problems.append(f"{want_type}: {text!r} is not a JSON object")
            continue
        errors = [e.message for e in line_schema.iter_errors(line)]
        if errors:
            problems.append(f"{want_type}: {text} breaks WatchLine: {errors}")
        changes += "type" in line
        progress += "progress" in line
    if changes < WRITES + 1 or progress < 1:
        problems.append(f"{want_type}: saw {changes} of {WRITES + 1} changes and {progress} "
                        f"progress lines in {DEADLINE_S} s")
    print(f"watchcheck: {want_type}: {changes} changes and {progress} progress lines, "
          f"each valid WatchLine" if not problems else f"watchcheck: {want_type}: failed")
    return problems


def main():
    spec_path, ca, cert, key_file, token_file, endpoint = sys.argv[1:7]
    spec = json.load(open(spec_path, encoding="utf-8"))
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key_file)
    token = open(token_file, encoding="utf-8").read().strip()
    problems = []
    for accept in (None, "text/event-stream"):
        problems += check_stream(spec, context, token, endpoint, accept)
    refused = request(context, token, endpoint, "GET", "/v1/watch")
    body = json.loads(refused.read())
    errors = [e.message for e in validator(spec, "ErrorBody").iter_errors(body)]
    if refused.status != 400 or errors:
        problems.append(f"a watch without a filter: {refused.status} {body} {errors}")
    for problem in problems:
        print(f"watchcheck: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
