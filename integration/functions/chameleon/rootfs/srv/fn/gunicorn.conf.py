"""Gunicorn settings and hooks of the chameleon function (gunicorn 20.1).

A master and one sync worker. The master imports app.py before forking
(preload_app). Readiness: once the worker is initialised, a thread in it
sends itself GET /healthz over a fresh connection; when the answer (served by
the worker's accept loop) has been read and both sides closed the connection,
the thread creates /tmp/.lock and ends.
"""

import os
import socket
import threading

bind = "0.0.0.0:8080"
workers = 1
worker_class = "sync"
preload_app = True
chdir = "/srv/fn"
# The worker wakes every timeout/2 to tell the master it is alive (and the
# master, whatever the timeout, wakes every second): an idle instance should
# not wake often, so a day; a hung worker is killed after that long.
timeout = 86400
graceful_timeout = 5  # SIGTERM: the worker finishes its request, 5 s at most
accesslog = None

READY_FILE = "/tmp/.lock"
PORT = 8080


def on_starting(server):
    if os.path.exists(READY_FILE):
        os.unlink(READY_FILE)


def _announce_ready(worker):
    # Read to the end of the stream: the worker has closed its side of the
    # connection when the ready file appears (no connection open then).
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=60) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
    except OSError as e:
        worker.log.error("ready check failed: %s", e)
        return
    status_line, _, body = answer.partition(b"\r\n")
    if status_line.split(b" ")[1:2] == [b"200"] and body.endswith(b"\r\n\r\nok"):
        open(READY_FILE, "w").close()
        worker.log.info("ready: worker %s serves on :%s", os.getpid(), PORT)
    else:
        worker.log.error("ready check failed: GET /healthz answered %r", answer[:200])


def post_worker_init(worker):
    """In the worker, just before its accept loop starts."""
    threading.Thread(target=_announce_ready, args=(worker,), name="ready", daemon=True).start()
