"""image-processing: Pillow transformations of a bundled picture (FunctionBench image_processing).

POST / {"ops": list of "flip" | "rotate" | "blur" | "resize" | "grayscale"
        (at most 10, applied in order; ["resize"]),
        "size": int (1..512, for "resize"; 128)}
  -> result {"sha256": hex of the output PNG, "width": int, "height": int}
  flip      mirror left to right
  rotate    90 degrees counter-clockwise
  blur      Gaussian blur, radius 2
  resize    scale (Lanczos) so that the longer side is `size`
  grayscale convert to 8-bit luminance

Served by http.server (one process, one request at a time).
State: the decoded picture (image.png, 384x256 RGB, shipped beside this file),
loaded at start; every request starts from it.
"""

import hashlib
import http.server
import io
import json
import os
import signal
import socketserver
import sys

from PIL import Image, ImageFilter

NAME = "image-processing"
PORT = 8080
READY_FILE = "/tmp/.lock"
MAX_BODY = 1 << 20
MAX_OPS, MAX_SIZE = 10, 512

with Image.open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "image.png")) as _f:
    IMAGE = _f.convert("RGB")  # decoded once, kept in memory

OPS = {
    "flip": lambda img, size: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "rotate": lambda img, size: img.transpose(Image.Transpose.ROTATE_90),
    "blur": lambda img, size: img.filter(ImageFilter.GaussianBlur(radius=2)),
    "resize": lambda img, size: img.resize(fit(img.size, size), Image.Resampling.LANCZOS),
    "grayscale": lambda img, size: img.convert("L"),
}

requests = 0  # POST / requests served by this process


class BadRequest(ValueError):
    pass


def fit(dims, size):
    """(width, height) scaled so that the longer side is `size`."""
    w, h = dims
    scale = size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def handle(request):
    ops = request.get("ops", ["resize"])
    size = request.get("size", 128)
    if not isinstance(ops, list) or len(ops) > MAX_OPS or not all(isinstance(op, str) and op in OPS for op in ops):
        raise BadRequest(f'"ops" must be a list of at most {MAX_OPS} of {sorted(OPS)}')
    if type(size) is not int or not 1 <= size <= MAX_SIZE:
        raise BadRequest(f'"size" must be an integer in [1, {MAX_SIZE}]')
    img = IMAGE
    for op in ops:
        img = OPS[op](img, size)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=6)  # fixed options: same bytes every time
    return {"sha256": hashlib.sha256(out.getvalue()).hexdigest(), "width": img.width, "height": img.height}


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
        status, doc = serve(self.rfile.read(length))
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


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.path.exists(READY_FILE):
        os.unlink(READY_FILE)
    handle({"ops": list(OPS), "size": 64})  # loads the PNG encoder and filters too
    server = Server(("0.0.0.0", PORT), Handler)
    open(READY_FILE, "w").close()
    print(f"{NAME}: ready on :{PORT} (pid {os.getpid()}), image {IMAGE.width}x{IMAGE.height}")
    server.serve_forever(poll_interval=None)  # blocks in accept until a request comes


if __name__ == "__main__":
    main()
