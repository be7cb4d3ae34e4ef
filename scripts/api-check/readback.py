"""Read back every acknowledged write of a Schemathesis run (scripts/api-check.sh).

Reads the request log the hooks wrote ($MIRRORKV_API_CHECK_LOG), in order. A key whose last
change is an acknowledged (200) put without a lease, with no later request that changed or may
have changed it (a 200 delete, a leased put, a 200 transaction naming it, any 5xx), must read
back on every node, at `linearizable`, with exactly the bytes that put sent and its index as
the ETag. A 3xx or 4xx answer applied nothing (that is what the contract says of them).

Beside the fuzzing, `write` puts fresh keys (`api-check/<n>`, through every node in turn)
while Schemathesis runs, at most MAX_WRITES of them for at most SECONDS, and logs each
acknowledged one in the same form; `check` then reads those back too.
Exit 0 when every such key reads back (and there was at least one), 1 otherwise.

Usage: readback.py write LOG SECONDS MAX_WRITES CA CERT KEY TOKEN ENDPOINT...
       readback.py check LOG CA CERT KEY TOKEN ENDPOINT...
"""
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, quote, unquote

KV_PREFIX = "/v1/kv/"
TIMEOUT_S = 10


def txn_keys(body_hex):
    try:
        body = json.loads(bytes.fromhex(body_hex))
    except (ValueError, UnicodeDecodeError):
        return []
    keys = []
    if not isinstance(body, dict):
        return keys
    for branch in ("success", "failure"):
        ops = body.get(branch)
        for op in ops if isinstance(ops, list) else []:
            for kind in ("put", "delete"):
                target = op.get(kind) if isinstance(op, dict) else None
                if isinstance(target, dict) and isinstance(target.get("key"), str):
                    keys.append(target["key"])
    return keys


def expected_values(log_path):
    """key -> (bytes, index) of every key that must read back; and how many keys were unsure."""
    last = {}
    statuses = {}
    with open(log_path, encoding="utf-8") as log:
        for line in log:
            record = json.loads(line)
            what = f"{record['method']} {record['operation']} {record['status']}"
            statuses[what] = statuses.get(what, 0) + 1
            # A 3xx or 4xx answer applied nothing; a 5xx may have, so its keys become unsure.
            if 300 <= record["status"] < 500:
                continue
            if record["operation"] == "/v1/txn":
                for key in txn_keys(record["body_hex"]):
                    last[key] = None
                continue
            if not record["path"].startswith(KV_PREFIX) or record["path"] == KV_PREFIX:
                continue
            key = unquote(record["path"][len(KV_PREFIX):])
            leased = "lease" in parse_qs(record["query"], keep_blank_values=True)
            if record["method"] == "PUT" and record["status"] == 200 and not leased:
                index = json.loads(record["answer"])["index"]
                last[key] = (bytes.fromhex(record["body_hex"]), index)
            else:
                last[key] = None
    print("readback: requests that may change keys: " + ", ".join(f"{w}: {n}" for w, n in sorted(statuses.items())))
    sure = {key: value for key, value in last.items() if value is not None}
    return sure, len(last) - len(sure)


def read(context, token, endpoint, key):
    url = f"https://{endpoint}{KV_PREFIX}{quote(key, safe='/')}?consistency=linearizable"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=TIMEOUT_S) as answer:
            return answer.status, answer.read(), answer.headers.get("ETag")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), None


def client(ca, cert, key_file, token_file):
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key_file)
    with open(token_file, encoding="utf-8") as f:
        return context, f.read().strip()


def write(log_path, seconds, max_writes, context, token, endpoints):
    deadline = time.monotonic() + float(seconds)
    acked = 0
    for n in range(int(max_writes)):
        if time.monotonic() > deadline:
            break
        endpoint = endpoints[n % len(endpoints)]
        path = f"{KV_PREFIX}api-check/{n}"
        value = f"written {n} through {endpoint}".encode()
        request = urllib.request.Request(f"https://{endpoint}{path}", data=value, method="PUT",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=TIMEOUT_S) as answer:
                status, text = answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, None
        except OSError:
            status, text = 599, None  # no answer: the outcome is unknown
        record = {"method": "PUT", "operation": "/v1/kv/{key}", "path": path, "query": "",
                  "status": status, "body_hex": value.hex(), "answer": text}
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        acked += status == 200
        time.sleep(0.02)
    print(f"readback: {acked} writes acknowledged beside the fuzzing")
    return 0


def check(log_path, context, token, endpoints):
    sure, unsure = expected_values(log_path)
    lost = 0
    for key, (value, index) in sorted(sure.items()):
        for endpoint in endpoints:
            status, body, etag = read(context, token, endpoint, key)
            if status != 200 or body != value or etag != f'"{index}"':
                lost += 1
                print(f"readback: {key!r} on {endpoint}: want {value!r} at index {index}, "
                      f"got {status} {body[:200]!r} etag {etag}")
    print(f"readback: {len(sure)} acknowledged writes read back on {len(endpoints)} nodes "
          f"({unsure} keys skipped: deleted, leased, in a transaction or a 5xx); {lost} wrong")
    if not sure:
        print("readback: nothing to read back: the run acknowledged no plain put")
        return 1
    return 1 if lost else 0


def main():
    mode, log_path = sys.argv[1:3]
    if mode == "write":
        seconds, max_writes = sys.argv[3:5]
        context, token = client(*sys.argv[5:9])
        return write(log_path, seconds, max_writes, context, token, sys.argv[9:])
    context, token = client(*sys.argv[3:7])
    return check(log_path, context, token, sys.argv[7:])


if __name__ == "__main__":
    sys.exit(main())
