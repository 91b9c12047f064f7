"""A WSGI app that renders prices from the Lockstep cache.

    LOCKSTEP_SERVER=http://127.0.0.1:7420 LOCKSTEP_KEYS=price:apple,price:pear \
        gunicorn --preload -w 4 -b 127.0.0.1:8000 --chdir examples/python app:app

GET /              an HTML table of the configured keys, all from one pinned version
GET /price/KEY     {"key", "value", "version", "pid"} as JSON
GET /stats         the handle's statistics

The client is opened at import, so with --preload it is opened once in the master; each
worker inherits the data and restarts the retrieval thread on its first request.
"""

import html
import json
import os
import socket

import lockstep

client = lockstep.Client(
    os.environ.get("LOCKSTEP_SERVER", "http://127.0.0.1:7420"),
    token=os.environ.get("LOCKSTEP_READ_TOKEN") or None,
    name=os.environ.get("LOCKSTEP_NAME", f"gunicorn@{socket.gethostname()}"),
    bootstrap_wait=float(os.environ.get("LOCKSTEP_BOOTSTRAP_WAIT", "10")),
)
KEYS = [k for k in os.environ.get("LOCKSTEP_KEYS", "price:apple,price:pear").split(",") if k]


def _json(start_response, status, body):
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/price/"):
        key = path[len("/price/"):]
        with client.snapshot() as s:
            value = s.get(key)
            version = s.version
        if value is None:
            return _json(start_response, "404 Not Found", {"error": f"no key {key}"})
        return _json(start_response, "200 OK", {"key": key, "value": value.decode(),
                                                "version": version, "pid": os.getpid()})
    if path == "/stats":
        return _json(start_response, "200 OK", client.stats())
    # One pinned version for the whole page: no mixing of old and new prices.
    with client.snapshot() as s:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape((s.get(k) or b'-').decode())}</td></tr>"
            for k in KEYS)
        version = s.version
    page = (f"<!doctype html><title>Prices</title><h1>Prices (version {version})</h1>"
            f"<table>{rows}</table><p>served by pid {os.getpid()}</p>").encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(page)))])
    return [page]
