"""json-serde: JSON serialisation and parsing of generated documents (SeBS-style).

POST / {"size": int (0..5000; 100)}
  -> result {"sha256": hex, "records": n, "state_sha256": hex}
Builds a document of `size` records from a generator seeded by the request,
json.dumps it, json.loads it back, and hashes the canonical dump (sorted keys,
compact separators). "state_sha256" hashes `size` records sampled evenly
across the startup document, so every request reads state from all over it.

Served by flask on waitress (one process, one worker thread).
State: a parsed document of 20000 records (about 7 MB of JSON, some 35 MB
of Python objects) built and round-tripped through JSON at start.
"""

import hashlib
import json
import os
import random
import signal
import sys

import flask
import waitress

NAME = "json-serde"
PORT = 8080
READY_FILE = "/tmp/.lock"
MAX_BODY = 1 << 20
MAX_SIZE = 5000
STATE_RECORDS = 20000

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
    "xray yankee zulu"
).split()
CITIES = ("Berlin", "Lisbon", "Nairobi", "Osaka", "Quito", "Reykjavik", "Sydney", "Toronto")


def make_record(rng, i):
    """One deterministic record: strings, numbers, booleans, nested lists/objects."""
    name = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{rng.randrange(10**6):06d}"
    return {
        "id": i,
        "name": name,
        "email": f"{name}@example.org",
        "active": rng.random() < 0.5,
        "score": round(rng.uniform(0, 1000), 4),
        "tags": rng.sample(WORDS, rng.randrange(1, 6)),
        "address": {
            "street": f"{rng.randrange(1, 500)} {rng.choice(WORDS).title()} Street",
            "city": rng.choice(CITIES),
            "zip": f"{rng.randrange(10**5):05d}",
        },
        "history": [
            {"t": 1_600_000_000 + rng.randrange(10**8), "v": rng.randrange(-1000, 1000)}
            for _ in range(rng.randrange(0, 5))
        ],
        "note": None if rng.random() < 0.3 else " ".join(rng.choices(WORDS, k=8)),
    }


def make_document(seed, n):
    rng = random.Random(seed)
    return {"seed": seed, "count": n, "records": [make_record(rng, i) for i in range(n)]}


def canonical(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# The startup document, parsed from its JSON text like a loaded data set.
STATE = json.loads(json.dumps(make_document(f"{NAME}:state", STATE_RECORDS)))

app = flask.Flask(NAME)
requests = 0  # POST / requests served by this process


class BadRequest(ValueError):
    pass


def handle(request):
    size = request.get("size", 100)
    if type(size) is not int or not 0 <= size <= MAX_SIZE:
        raise BadRequest(f'"size" must be an integer in [0, {MAX_SIZE}]')
    text = json.dumps(make_document(f"{NAME}:{size}", size))
    parsed = json.loads(text)
    records = STATE["records"]
    sample = [records[k * len(records) // size] for k in range(size)]
    return {
        "sha256": hashlib.sha256(canonical(parsed)).hexdigest(),
        "records": len(parsed["records"]),
        "state_sha256": hashlib.sha256(canonical(sample)).hexdigest(),
    }


def reply(status, doc):
    return flask.Response(json.dumps(doc), status=status, mimetype="application/json")


@app.get("/healthz")
def healthz():
    return flask.Response("ok", mimetype="text/plain")


@app.post("/")
def invoke():
    global requests
    requests += 1
    if (flask.request.content_length or 0) > MAX_BODY:
        return reply(413, {"error": "body too large"})
    try:
        request = json.loads(flask.request.get_data())
    except ValueError as e:
        return reply(400, {"error": f"bad JSON: {e}"})
    if not isinstance(request, dict):
        return reply(400, {"error": "the body must be a JSON object"})
    try:
        result = handle(request)
    except BadRequest as e:
        return reply(400, {"error": str(e)})
    except Exception as e:  # a bug: answer in JSON like the other errors
        return reply(500, {"error": f"{type(e).__name__}: {e}"})
    return reply(200, {"function": NAME, "result": result, "requests": requests, "pid": os.getpid()})


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.path.exists(READY_FILE):
        os.unlink(READY_FILE)
    handle({"size": 100})
    # One worker thread; the accept loop polls only when there is work (its
    # timeout merely bounds how late idle connections are cleaned up).
    # Waitress closes each connection after the response for HTTP/1.0
    # clients and those that send "Connection: close".
    server = waitress.create_server(
        app, host="0.0.0.0", port=PORT, threads=1, asyncore_loop_timeout=3600, ident=NAME
    )
    open(READY_FILE, "w").close()
    print(f"{NAME}: ready on :{PORT} (pid {os.getpid()}), {len(STATE['records'])} records")
    server.run()  # returns on SIGTERM (waitress catches SystemExit)


if __name__ == "__main__":
    main()
