"""The HTTP front of dynamic-html, in the style of an OpenFaaS watchdog.

PID 1 of the container. It starts the function, handler.py, as a long-running
child process and talks to it over the child's stdin and stdout: one JSON line
per request each way (see handler.py). It serves HTTP on :8080, one request at
a time, and forwards every POST / body to the child, whose answer it returns.

- Ready (/tmp/.lock) once the child has answered a warm-up request through the
  pipe and the server is listening.
- If the child dies, the request that finds it gone gets 502; the next request
  starts a new child (with its own warm-up, pid and counter).
- SIGTERM (or SIGINT): forwards SIGTERM to the child, waits for it, exits 0.
"""

import base64
import http.server
import json
import os
import signal
import socketserver
import subprocess
import sys

PORT = 8080
READY_FILE = "/tmp/.lock"
MAX_BODY = 1 << 20
HANDLER = [sys.executable, "-u", os.path.join(os.path.dirname(os.path.abspath(__file__)), "handler.py")]
WARMUP = {"username": "warm-up", "random_len": 100}
STOP_TIMEOUT_S = 5


def log(msg):
    print(f"watchdog: {msg}", file=sys.stderr)


class Function:
    """The function process and the two pipes to it."""

    def __init__(self):
        self.proc = None

    def start(self):
        """Start the child and warm it up; False if it does not answer."""
        self.proc = subprocess.Popen(HANDLER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        answer = self.call(json.dumps(WARMUP).encode(), warmup=True)
        if answer is None or answer[0] != 200:
            log(f"the function's warm-up failed: {answer}")
            self.stop()
            return False
        log(f"function process {self.proc.pid} ready")
        return True

    def call(self, body, warmup=False):
        """(status, JSON document) from the child, or None if it died."""
        msg = {"body": base64.b64encode(body).decode(), "warmup": warmup}
        try:
            self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # BrokenPipeError: it is gone
            line = b""
        if not line:
            log(f"function process {self.proc.pid} died (exit {self.proc.wait()})")
            for pipe in (self.proc.stdin, self.proc.stdout):
                try:
                    pipe.close()
                except OSError:  # unflushed data to a dead reader
                    pass
            self.proc = None
            return None
        answer = json.loads(line)
        return answer["status"], answer["doc"]

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


FUNCTION = Function()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # with "Connection: close" on every response

    def do_GET(self):
        if self.path == "/healthz":
            self.reply(200, b"ok", "text/plain")
        else:
            self.reply(404, b'{"error": "not found"}')

    def do_POST(self):
        if self.path != "/":
            return self.reply(404, b'{"error": "not found"}')
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.reply(413, b'{"error": "body too large"}')
        body = self.rfile.read(length)
        if FUNCTION.proc is None and not FUNCTION.start():  # it died on an earlier request
            return self.reply(502, b'{"error": "the function process does not start"}')
        answer = FUNCTION.call(body)
        if answer is None:
            return self.reply(502, b'{"error": "the function process died"}')
        status, doc = answer
        self.reply(status, json.dumps(doc).encode())

    def reply(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # no access log


class Server(http.server.HTTPServer):
    request_queue_size = 128

    def server_bind(self):
        # HTTPServer.server_bind would resolve the host name (socket.getfqdn),
        # which is useless here and slow without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


def on_term(signum, frame):
    FUNCTION.stop()
    sys.exit(0)


def main():
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if os.path.exists(READY_FILE):
        os.unlink(READY_FILE)
    if not FUNCTION.start():
        sys.exit(1)
    server = Server(("0.0.0.0", PORT), Handler)
    open(READY_FILE, "w").close()
    log(f"ready on :{PORT} (pid {os.getpid()}, function pid {FUNCTION.proc.pid})")
    server.serve_forever(poll_interval=None)  # blocks in accept until a request comes


if __name__ == "__main__":
    main()
