"""A local web page to draw digits on, and its JSON API, served by Python's standard library.

``GET /`` is the page (its script and style ship in ``mnistfx/web``: nothing is fetched from
elsewhere), ``GET /api/health`` names the model that answers, and ``POST /api/predict`` takes an
image file (the page sends a PNG of its canvas) and answers the label, the ten probabilities, the
28×28 image the model saw and the milliseconds taken. Images are prepared exactly as
``mnistfx predict`` prepares files. Each connection has its own thread and deadlines; images are
decoded and answered one at a time.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

import torch

from .errors import MnistfxError
from .images import decode_image, prepare_digit
from .weights import Weights, load_model_weights

MAX_BODY = 2 << 20       # bytes; the page's PNGs are a few kB
IDLE_TIMEOUT = 10        # seconds a connection may wait between two reads
HEADER_DEADLINE = 10     # seconds a request line and its headers may take to arrive in all (or an idle kept-alive wait)
BODY_DEADLINE = 30       # seconds a request body may take to arrive in all
MAX_CONNECTIONS = 64     # open at once; more are answered 503 at once
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"), "/style.css": ("style.css", "text/css; charset=utf-8")}
_SOURCE = "the posted image"


class Predictor:
    """Trained weights answering one image file's bytes at a time (see :meth:`__call__`)."""

    def __init__(self, weights: Weights):
        self.weights = weights
        self.lock = threading.Lock()
        with torch.inference_mode():  # the first call's one-off costs, now
            weights.probabilities(torch.zeros(1, 28, 28, dtype=torch.uint8))

    def __call__(self, data: bytes) -> dict:
        """The answer to an image file's bytes: ``label``, ``probabilities``, ``image`` (28 rows of 28
        values 0-255: what the model saw) and ``ms`` (the work on this image, from its bytes to the answer).

        Raises:
            MnistfxError: the bytes are not an image that can be decoded, or it shows no digit; the weights
                give no finite probabilities.
        """
        with self.lock:  # one image at a time: a decoded image may take 200 MB, and there are 2 cores to share
            start = time.perf_counter()
            gray, alpha = decode_image(data, _SOURCE)
            image = prepare_digit(gray, alpha=alpha, source=_SOURCE)
            with torch.inference_mode():
                probs = self.weights.checked_probabilities(image[None])[0].float().cpu()
        return {"label": int(probs.argmax()), "probabilities": [round(float(p), 6) for p in probs],
                "image": image.tolist(), "ms": round(1000 * (time.perf_counter() - start), 3)}


class DigitServer(ThreadingHTTPServer):
    """The HTTP server of :func:`make_server`: a thread per connection, at most :data:`MAX_CONNECTIONS`."""

    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS  # the listen backlog: a burst waits in the kernel, not refused
    allow_reuse_address = True  # a restart right after Ctrl-C; a port another server listens on is still refused

    def __init__(self, address, predictor: Predictor, *, log=None):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.predictor, self.log = predictor, log
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections: retry"},
                                          close=True))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)) and self.log:
            self.log(f"error: a request from {client_address[0]} failed: {type(error).__name__}: {error}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mnistfx"
    timeout = IDLE_TIMEOUT

    def handle_one_request(self):
        # a client that trickles its headers must not hold a connection slot for ever: cut it off
        self._deadline = threading.Timer(HEADER_DEADLINE, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def parse_request(self):
        try:
            return super().parse_request()
        finally:
            self._deadline.cancel()  # the headers are in; the body has its own deadline

    def _cut_off(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/api/health":
            w = self.server.predictor.weights
            return self._send(HTTPStatus.OK, {"status": "ok", "model": w.model.name, "members": w.members})
        if path in STATIC:
            name, kind = STATIC[path]
            return self._send(HTTPStatus.OK, _asset(name), kind)
        self._send(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path} (the page is /, the API /api/predict)"})

    def do_POST(self):
        if urlsplit(self.path).path != "/api/predict":
            return self._send(HTTPStatus.NOT_FOUND, {"error": "POST an image to /api/predict"})
        if self.headers.get("Transfer-Encoding"):
            return self._refuse(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length, not chunked")
        lengths = self.headers.get_all("Content-Length", [])
        if len(lengths) > 1:
            return self._refuse(HTTPStatus.BAD_REQUEST, "the request has more than one Content-Length")
        length = lengths[0] if lengths else None
        if length is None:
            return self._refuse(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length")
        length = length.strip()
        if not (length.isascii() and length.isdigit() and len(length) <= 12):
            return self._refuse(HTTPStatus.BAD_REQUEST, "the Content-Length is not a number of bytes")
        if int(length) > MAX_BODY:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"the body is {int(length):,} bytes; at most {MAX_BODY:,} are read: send a smaller image")
        body = self._read_body(int(length))
        if body is None:
            return self._refuse(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length, or came too slowly")
        try:
            answer = self.server.predictor(body)
        except MnistfxError as e:
            return self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # never a dead thread without an answer
            if self.server.log:
                self.server.log(f"error: a prediction failed: {type(e).__name__}: {e}")
            return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "the prediction failed; see the server's log"})
        self._send(HTTPStatus.OK, answer)

    def _read_body(self, length: int) -> bytes | None:
        """The body, or ``None`` if it is cut short or does not arrive within :data:`BODY_DEADLINE`."""
        deadline, parts, have = time.monotonic() + BODY_DEADLINE, [], 0
        while have < length:
            if time.monotonic() > deadline:
                return None
            try:
                part = self.rfile.read1(min(length - have, 1 << 16))
            except (TimeoutError, OSError):
                return None
            if not part:
                return None
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        try:
            self._send(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase})
        except OSError:
            pass

    def _refuse(self, status: HTTPStatus, message: str):
        self.close_connection = True  # the body, if any, is not read: the connection cannot be reused
        self._send(status, {"error": message})

    def _send(self, status: HTTPStatus, body, kind: str = "application/json"):
        self.wfile.write(_response(status, body, kind, close=self.close_connection))

    def log_message(self, format, *args):
        pass  # one line per request would drown the terminal while drawing


def _response(status: HTTPStatus, body, kind: str = "application/json", *, close: bool = False) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {kind}", f"Content-Length: {len(data)}",
            "Cache-Control: no-store", "X-Content-Type-Options: nosniff"]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("web", name).read_bytes()


def make_server(weights, host: str = "127.0.0.1", port: int = 8000, *, log=None) -> DigitServer:
    """A bound (not yet serving) :class:`DigitServer` for ``weights``; call ``serve_forever()`` on it.

    Arguments:
        weights: a :class:`~mnistfx.Weights` (a single model or an ensemble), or a weights file's path.
        host: the address to listen on (``127.0.0.1``: this machine only).
        port: the port (0: any free one; see the server's ``url``).
        log: called with one line for each request that fails on the server's side.

    Raises:
        MnistfxError: the port is in use or cannot be used, or the host is not an address of this machine.
    """
    if not isinstance(weights, Weights):
        weights = load_model_weights(weights)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MnistfxError(f"port {port!r} is not a port number: pass one from 0 to 65535")
    predictor = Predictor(weights)
    try:
        return DigitServer((host, port), predictor, log=log)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise MnistfxError(f"port {port} on {host} is in use: pass another --port (0 picks a free one)") from None
        if e.errno == errno.EACCES:
            raise MnistfxError(f"port {port} needs privileges to listen on: pass a port above 1023") from None
        raise MnistfxError(f"cannot listen on {host} port {port} ({e.strerror or e}): pass a host "
                           "address of this machine, such as 127.0.0.1") from None
