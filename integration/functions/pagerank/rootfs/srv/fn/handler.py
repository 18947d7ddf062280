"""pagerank: PageRank of a Barabási-Albert graph with python-igraph (SeBS 501.graph-pagerank).

POST / {"top": int (1..20; 10), "damping": float (0 < d < 1; 0.85)}
  -> result {"top": [[node, rank rounded to 10 decimals], ...]}
The `top` highest-ranked nodes, ties broken by node id.

Served by http.server (one process, one request at a time).
State: the graph (20000 nodes, 3 edges per new node), built at start from a
fixed seed: python-igraph draws its random numbers from Python's `random`.
"""

import http.server
import json
import os
import random
import signal
import socketserver
import sys

# igraph's PRPACK solver sums in parallel with OpenMP, whose reduction order
# varies from run to run (the last bits of the ranks differ); one thread keeps
# results reproducible and leaves no idle OpenMP pool. Read when igraph loads.
os.environ["OMP_NUM_THREADS"] = "1"
import igraph  # noqa: E402

NAME = "pagerank"
PORT = 8080
READY_FILE = "/tmp/.lock"
MAX_BODY = 1 << 20
NODES, EDGES_PER_NODE, SEED = 20000, 3, 42

random.seed(SEED)
GRAPH = igraph.Graph.Barabasi(NODES, m=EDGES_PER_NODE)

requests = 0  # POST / requests served by this process


class BadRequest(ValueError):
    pass


def handle(request):
    top = request.get("top", 10)
    damping = request.get("damping", 0.85)
    if type(top) is not int or not 1 <= top <= 20:
        raise BadRequest('"top" must be an integer in [1, 20]')
    if type(damping) not in (int, float) or not 0 < damping < 1:
        raise BadRequest('"damping" must be a number in (0, 1)')
    ranks = GRAPH.pagerank(damping=damping)
    best = sorted(range(len(ranks)), key=lambda v: (-ranks[v], v))[:top]
    return {"top": [[v, round(ranks[v], 10)] for v in best]}


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
    handle({"top": 5, "damping": 0.85})
    server = Server(("0.0.0.0", PORT), Handler)
    open(READY_FILE, "w").close()
    print(f"{NAME}: ready on :{PORT} (pid {os.getpid()}), {GRAPH.vcount()} nodes, {GRAPH.ecount()} edges")
    server.serve_forever(poll_interval=None)  # blocks in accept until a request comes


if __name__ == "__main__":
    main()
