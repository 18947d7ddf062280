"""pyaes: AES-256-CTR encryption and decryption in pure Python (FunctionBench).

POST / {"message": str (<= 16 KiB UTF-8; ""), "iterations": int (1..100; 1)}
  -> result {"ciphertext_sha256": hex, "roundtrip_ok": bool}
Each iteration encrypts the message with a fresh counter starting at the
iteration's number, then decrypts it; the digest covers every ciphertext.

Served by waitress (a plain WSGI app, one process, one worker thread).
State: pyaes's S-boxes and round tables (module-level lists every block
goes through) and the key, derived at start.
"""

import hashlib
import http
import json
import os
import signal
import sys

import pyaes
import waitress

NAME = "pyaes"
PORT = 8080
READY_FILE = "/tmp/.lock"
MAX_BODY = 1 << 20
MAX_MESSAGE = 16 << 10
MAX_ITERATIONS = 100

# A fixed 256-bit key derived from a constant.
KEY = hashlib.pbkdf2_hmac("sha256", b"trenv fn-pyaes key", b"fixed salt", 10000)

requests = 0  # POST / requests served by this process


class BadRequest(ValueError):
    pass


def ctr(iteration):
    """AES-256-CTR with the counter starting at `iteration`."""
    return pyaes.AESModeOfOperationCTR(KEY, pyaes.Counter(initial_value=iteration))


def handle(request):
    message = request.get("message", "")
    iterations = request.get("iterations", 1)
    if not isinstance(message, str) or len(message.encode()) > MAX_MESSAGE:
        raise BadRequest(f'"message" must be a string of at most {MAX_MESSAGE} bytes')
    if type(iterations) is not int or not 1 <= iterations <= MAX_ITERATIONS:
        raise BadRequest(f'"iterations" must be an integer in [1, {MAX_ITERATIONS}]')
    plaintext = message.encode()
    digest = hashlib.sha256()
    ok = True
    for i in range(iterations):
        ciphertext = ctr(i).encrypt(plaintext)
        digest.update(ciphertext)
        ok = ok and ctr(i).decrypt(ciphertext) == plaintext
    return {"ciphertext_sha256": digest.hexdigest(), "roundtrip_ok": ok}


def serve(body):
    """(status, JSON document) for a POST / body."""
    global requests
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
    except Exception as e:  # a bug: answer rather than drop the connection
        return 500, {"error": f"{type(e).__name__}: {e}"}
    return 200, {"function": NAME, "result": result, "requests": requests, "pid": os.getpid()}


def app(environ, start_response):
    """The WSGI application: GET /healthz and POST /."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if path == "/healthz" and method in ("GET", "HEAD"):
        status, body, ctype = 200, b"ok", "text/plain"
    elif path == "/" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            code, doc = 413, {"error": "body too large"}
        else:
            code, doc = serve(environ["wsgi.input"].read(length))
        status, body, ctype = code, json.dumps(doc).encode(), "application/json"
    else:
        status, body, ctype = 404, b'{"error": "not found"}', "application/json"
    # Waitress closes the connection after the response for HTTP/1.0 clients
    # and for those that send "Connection: close" (a WSGI app may not set it).
    start_response(
        f"{status} {http.HTTPStatus(status).phrase}",
        [("Content-Type", ctype), ("Content-Length", str(len(body)))],
    )
    return [body]


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.path.exists(READY_FILE):
        os.unlink(READY_FILE)
    handle({"message": "warm-up", "iterations": 2})
    # One worker thread; the accept loop polls only when there is work (its
    # timeout merely bounds how late idle connections are cleaned up).
    server = waitress.create_server(
        app, host="0.0.0.0", port=PORT, threads=1, asyncore_loop_timeout=3600, ident=NAME
    )
    open(READY_FILE, "w").close()
    print(f"{NAME}: ready on :{PORT} (pid {os.getpid()})")
    server.run()  # returns on SIGTERM (waitress catches SystemExit)


if __name__ == "__main__":
    main()
