"""dynamic-html: renders an HTML page with jinja2 (SeBS 110.dynamic-html).

The function process behind watchdog.py: it reads one JSON line per request
on stdin and writes one JSON line per response on stdout (nothing else goes
to stdout; logs go to stderr).

  in:  {"body": "<the HTTP request body, base64>", "warmup": bool (optional)}
  out: {"status": HTTP status, "doc": the JSON response document}

Request body {"username": str (<= 256 characters; "guest"),
              "random_len": int (0..10000; 10)}
  -> result {"sha256": hex of the page (UTF-8), "bytes": its length}
The random numbers come from random.Random seeded with the request.

State: the jinja2 environment with the template compiled at start, and the
request counter ("requests" counts the POST / bodies the watchdog forwarded to
this process; the warm-up is not one).
"""

import base64
import hashlib
import json
import os
import random
import signal
import sys

import jinja2

NAME = "dynamic-html"
MAX_USERNAME, MAX_RANDOM_LEN = 256, 10000

ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")),
    autoescape=True,
    auto_reload=False,
)
TEMPLATE = ENV.get_template("page.html")  # compiled to Python code once

requests = 0


class BadRequest(ValueError):
    pass


def handle(request):
    username = request.get("username", "guest")
    random_len = request.get("random_len", 10)
    if not isinstance(username, str) or len(username) > MAX_USERNAME:
        raise BadRequest(f'"username" must be a string of at most {MAX_USERNAME} characters')
    if type(random_len) is not int or not 0 <= random_len <= MAX_RANDOM_LEN:
        raise BadRequest(f'"random_len" must be an integer in [0, {MAX_RANDOM_LEN}]')
    request_id = hashlib.sha256(f"{username}\0{random_len}".encode()).hexdigest()[:16]
    numbers = random.Random(request_id).sample(range(1_000_000), random_len)
    page = TEMPLATE.render(username=username, request_id=request_id, numbers=numbers).encode()
    return {"sha256": hashlib.sha256(page).hexdigest(), "bytes": len(page)}


def serve(body, warmup=False):
    """(status, JSON document) for a POST / body."""
    global requests
    if not warmup:
        requests += 1
    try:
        request = json.loads(body)
    except ValueError as e:
        return 400, {"error": f"bad JSON: {e}"}
    if not isinstance(request, dict):
        return 400, {"error": "the body must be a JSON object"}
    try:
        result = handle(request)
    except BadRequest as e:
        return 400, {"error": str(e)}
    except Exception as e:  # a bug: answer rather than die
        return 500, {"error": f"{type(e).__name__}: {e}"}
    return 200, {"function": NAME, "result": result, "requests": requests, "pid": os.getpid()}


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the watchdog decides when we stop
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while line := stdin.readline():  # blocks until the watchdog writes; EOF: it is gone
        msg = json.loads(line)
        status, doc = serve(base64.b64decode(msg["body"]), msg.get("warmup", False))
        stdout.write(json.dumps({"status": status, "doc": doc}).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    main()
