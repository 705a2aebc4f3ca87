"""A local web page to draw digits on, and its JSON API, served by Python's standard library.

``GET /`` is the page (its script and style ship in ``mnistfx/web``: nothing is fetched from
elsewhere), ``GET /api/health`` names the model that answers, and ``POST /api/predict`` takes an
image file (the page sends a PNG of its canvas) and answers the label, the ten probabilities, the
28×28 image the model saw and the milliseconds taken. Images are prepared exactly as
``mnistfx predict`` prepares files. Each connection has its own thread and deadlines; images are
decoded and answered one at a time.

The HTTP layer is the standard library's, with limits of its own (the API is two routes, and this
keeps ``serve`` free of extras): a request's line and headers are capped at :data:`MAX_HEADER_BYTES`
and must arrive within :data:`HEADER_DEADLINE`, its body at :data:`MAX_BODY` within
:data:`BODY_DEADLINE`; a body that is not read closes the connection (so it is never parsed as the
next request); ``Expect: 100-continue`` is answered only after the length is checked; ``HEAD``
answers ``GET``'s headers. At most :data:`MAX_CONNECTIONS` are open; when all are, the one that has
waited longest on its client (for a request, or to take an answer) is cut off to make room, so slow
clients cannot hold every slot. At most :data:`MAX_QUEUED` images wait to be decoded (more get 503),
each of at most :data:`MAX_PIXELS`. Failures are logged at most :data:`LOG_BURST` lines a minute.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import torch

from .._types import StrPath
from ..data.digit_images import decode_image, prepare_digit
from ..errors import MnistfxError
from .weights import Weights, load_model_weights

MAX_BODY = 2 << 20  # bytes; the page's PNGs are a few kB
MAX_HEADER_BYTES = 16 << 10  # a request line and its headers; a browser's are under 2 kB
IDLE_TIMEOUT = 10  # seconds a connection may wait between two reads
HEADER_DEADLINE = 10  # seconds a request line and its headers may take to arrive in all (or an idle kept-alive wait)
BODY_DEADLINE = 30  # seconds a request body may take to arrive in all
MAX_CONNECTIONS = 64  # open at once; when all are, the one waiting longest on its client is cut off
MAX_QUEUED = 8  # images waiting for the one being decoded; more are answered 503 at once...
MAX_QUEUED_PER_CLIENT = 3  # ...as are more than this many from one address
MAX_PIXELS = 4_000_000  # a posted image's pixels (the page sends 280×280): at most ~0.2 s of decoding each
LOG_BURST = 5  # failure lines logged a minute; more are counted, not printed
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_SOURCE = "the posted image"


class Predictor:
    """Trained weights answering one image file's bytes at a time (see :meth:`__call__`)."""

    def __init__(self, weights: Weights):
        self.weights = weights
        self.lock = threading.Lock()
        self.queue = threading.BoundedSemaphore(MAX_QUEUED + 1)  # the one being answered, and those waiting
        self.queued: dict[str, int] = {}  # client address -> its images in the queue
        self.lock_queued = threading.Lock()
        with torch.inference_mode():  # the first call's one-off costs, now
            weights.probabilities(torch.zeros(1, 28, 28, dtype=torch.uint8))

    def __call__(self, data: bytes, client: str = "") -> dict:
        """The answer to an image file's bytes: ``label``, ``probabilities``, ``image`` (28 rows of 28
        values 0-255: what the model saw) and ``ms`` (the work on this image, from its bytes to the answer).

        Raises:
            MnistfxError: the bytes are not an image that can be decoded, or it shows no digit; the weights
                give no finite probabilities.
            Busy: :data:`MAX_QUEUED` images already wait, or :data:`MAX_QUEUED_PER_CLIENT` of ``client``'s
                (its address): one client cannot take every place in the queue.
        """
        with self.lock_queued:
            mine = self.queued.get(client, 0)
            if mine >= MAX_QUEUED_PER_CLIENT or not self.queue.acquire(blocking=False):
                raise Busy(f"{MAX_QUEUED} images wait to be read already ({mine} of them yours): retry")
            self.queued[client] = mine + 1
        try:
            return self._answer(data)
        finally:
            with self.lock_queued:
                self.queue.release()
                self.queued[client] -= 1
                if not self.queued[client]:
                    del self.queued[client]

    def _answer(self, data: bytes) -> dict:
        with self.lock:  # one image at a time: a decoded image may take 200 MB, and there are 2 cores to share
            start = time.perf_counter()
            gray, alpha = decode_image(data, _SOURCE, max_pixels=MAX_PIXELS)
            image = prepare_digit(gray, alpha=alpha, source=_SOURCE)
            with torch.inference_mode():
                probs = self.weights.checked_probabilities(image[None])[0].float().cpu()
        return {
            "label": int(probs.argmax()),
            "probabilities": [round(float(p), 6) for p in probs],
            "image": image.tolist(),
            "ms": round(1000 * (time.perf_counter() - start), 3),
        }


class Busy(MnistfxError):
    """The server has as many images waiting as it queues."""


class DigitServer(ThreadingHTTPServer):
    """The HTTP server of :func:`make_server`: a thread per connection, at most ``MAX_CONNECTIONS``."""

    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS  # the listen backlog: a burst waits in the kernel, not refused
    allow_reuse_address = True  # a restart right after Ctrl-C; a port another server listens on is still refused

    def __init__(
        self, address: tuple[str, int], predictor: Predictor, *, log: Callable[[str], object] | None = None
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.predictor, self.log = predictor, (_Log(log) if log else None)
        self.lock = threading.Lock()
        self.open = 0  # connections with a thread
        self.cut = 0  # of them, cut off to make room and not yet ended
        # handlers waiting on their client, as an ordered set: the longest wait first
        self.waiting: dict[_Handler, None] = {}
        self.local = threading.local()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = str(self.server_address[0]), self.server_address[1]  # an address family with a host and port
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    @property
    def local_only(self) -> bool:
        """Whether only this machine can reach the server (it listens on a loopback address)."""
        return ipaddress.ip_address(str(self.server_address[0]).partition("%")[0]).is_loopback

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            if self.open - self.cut >= MAX_CONNECTIONS and self.waiting:
                oldest = next(iter(self.waiting))  # all slots taken: the longest wait on a client makes room
                del self.waiting[oldest]
                oldest.cut_off(counted=True)
                self.cut += 1
            admit = self.open - self.cut < MAX_CONNECTIONS
            self.open += admit
        if not admit:  # every connection is being answered
            try:
                request.sendall(
                    _response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections: retry"}, close=True)
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.local.ended = False
        try:
            super().process_request_thread(request, client_address)
        finally:
            if not self.local.ended:  # the handler never ran (see ended())
                with self.lock:
                    self.open -= 1

    def wait(self, handler: _Handler, waiting: bool) -> None:
        """Note that ``handler`` waits on its client (``True``: for a request, or to take an answer) or
        works for it (``False``)."""
        with self.lock:
            self.waiting.pop(handler, None)
            if waiting:  # at the end of the order: the newest wait
                self.waiting[handler] = None

    def ended(self, handler: _Handler) -> None:
        """``handler``'s connection is over (in its own thread): its slot is free, in one step with its
        cut-off, so that a count between the two never refuses a connection."""
        with self.lock:
            self.waiting.pop(handler, None)
            self.open -= 1
            self.cut -= handler.counted_cut
        self.local.ended = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)) and self.log:
            self.log(f"error: a request from {client_address[0]} failed: {type(error).__name__}: {error}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mnistfx"
    timeout = IDLE_TIMEOUT
    counted_cut = False
    server: DigitServer

    def handle(self):
        try:
            super().handle()
        finally:
            self.server.ended(self)

    def handle_one_request(self):
        # a client that trickles its headers must not hold a connection slot for ever: cut it off
        self._deadline = threading.Timer(HEADER_DEADLINE, self.cut_off)
        self._deadline.daemon = True
        self._deadline.start()
        self._unread_body = False
        self.server.wait(self, True)
        raw, self.rfile = self.rfile, _HeaderBudget(self.rfile, MAX_HEADER_BYTES)  # type: ignore[assignment]
        try:
            super().handle_one_request()
        except http.client.LineTooLong:  # the request line alone is over the budget (headers: parse_request's)
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
        finally:
            self.rfile = raw
            self._deadline.cancel()

    def parse_request(self):
        try:
            if not super().parse_request():
                return False
        finally:
            self._deadline.cancel()  # the headers are in; the body has its own deadline
            self.rfile = getattr(self.rfile, "raw", self.rfile)
        # what follows the headers is a body unless the request says, in one plain way, that it has none
        lengths = [v.strip() for v in self.headers.get_all("Content-Length", [])]
        self._unread_body = "Transfer-Encoding" in self.headers or lengths not in ([], ["0"])
        problem = self._framing_problem(lengths)
        if problem:
            self._refuse(HTTPStatus.BAD_REQUEST, problem)
            return False
        if not self._unread_body:
            self.server.wait(self, False)
        return True

    def _framing_problem(self, lengths: list[str]) -> str | None:
        """Why the request's headers cannot say where it ends, if they cannot (a proxy in front may read
        them otherwise: a request smuggled in a body)."""
        if self.headers.defects or self.headers.get_payload():  # e.g. "Content-Length : 5" is no header
            return "a header line is not 'Name: value'"
        for name, value in self.headers.items():
            if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:  # folded lines are obsolete
                return "a header's name or value is malformed (or folded over lines)"
        if len(lengths) > 1:
            return "the request has more than one Content-Length"
        return None

    def cut_off(self, counted: bool = False):
        """End the connection from another thread (its deadline passed, or its slot is needed)."""
        self.counted_cut = self.counted_cut or counted
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def handle_expect_100(self):
        """Say ``100 Continue`` only to a body that would be read."""
        if self._path() != "/api/predict" or self.command != "POST":
            self._refuse(HTTPStatus.EXPECTATION_FAILED, "only POST /api/predict takes a body")
            return False
        return self._body_length() is not None and super().handle_expect_100()

    def _path(self) -> str | None:
        try:
            return urlsplit(self.path).path
        except ValueError:  # e.g. "http://[/": no URL
            return None

    def do_HEAD(self):
        self._head_only = True
        self.do_GET()

    def do_GET(self):
        path = self._path()
        if path is None:
            self._refuse(HTTPStatus.BAD_REQUEST, "the request's path is not a URL path")
            return None
        if path == "/api/health":
            w = self.server.predictor.weights
            return self._send(HTTPStatus.OK, {"status": "ok", "model": w.model.name, "members": w.members})
        if path in STATIC:
            name, kind = STATIC[path]
            return self._send(HTTPStatus.OK, _asset(name), kind)
        self._send(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path} (the page is /, the API /api/predict)"})

    def do_POST(self):
        if self._path() != "/api/predict":
            return self._send(HTTPStatus.NOT_FOUND, {"error": "POST an image to /api/predict"})
        length = self._body_length()
        if length is None:
            return
        body = self._read_body(length)
        if body is None:
            self._refuse(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length, or came too slowly")
            return None
        self._unread_body = False
        self.server.wait(self, False)
        try:
            answer = self.server.predictor(body, self.client_address[0])
        except Busy as e:
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
        except MnistfxError as e:
            return self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # never a dead thread without an answer
            if self.server.log:
                self.server.log(f"error: a prediction failed: {type(e).__name__}: {e}")
            return self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "the prediction failed; see the server's log"}
            )
        self._send(HTTPStatus.OK, answer)

    def _body_length(self) -> int | None:
        """The body's length if it may be read; else the refusal is sent and ``None`` returned."""
        if "Transfer-Encoding" in self.headers:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length, not chunked")
            return None
        lengths = self.headers.get_all("Content-Length", [])
        if not lengths:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length")
            return None
        length = lengths[0].strip()
        if not (length.isascii() and length.isdigit() and len(length) <= 12):
            self._refuse(HTTPStatus.BAD_REQUEST, "the Content-Length is not a number of bytes")
            return None
        if int(length) > MAX_BODY:
            self._refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {int(length):,} bytes; at most {MAX_BODY:,} are read: send a smaller image",
            )
            return None
        return int(length)

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
        if code == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
            message = f"the request line and headers are over {MAX_HEADER_BYTES:,} bytes"
        try:
            self._send(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase})
        except OSError:
            pass

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True  # the body, if any, is not read: the connection cannot be reused
        self._send(status, {"error": message})

    def _send(self, status: HTTPStatus, body, kind: str = "application/json"):
        if getattr(self, "_unread_body", False):  # what follows on the connection is a body, not a request
            self.close_connection = True
        self.server.wait(self, True)  # a client that does not read its answer holds the slot: it may be cut off
        self.wfile.write(
            _response(status, body, kind, close=self.close_connection, head_only=getattr(self, "_head_only", False))
        )
        self._head_only = False

    def log_message(self, format, *args):
        pass  # one line per request would drown the terminal while drawing


class _HeaderBudget:
    """A request's stream while its line and headers are read: at most ``budget`` bytes in all
    (``http.server`` caps each line, not their sum)."""

    def __init__(self, raw, budget: int):
        self.raw, self.left = raw, budget

    def readline(self, size: int = -1) -> bytes:
        line = self.raw.readline(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong("the request line and headers")
        return line


class _Log:
    """A log of at most :data:`LOG_BURST` lines a minute: a client must not flood the operator's terminal."""

    def __init__(self, log):
        self.log, self.lock = log, threading.Lock()
        self.window, self.count, self.dropped = 0.0, 0, 0

    def __call__(self, line: str) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.window >= 60:
                if self.dropped:
                    self.log(f"({self.dropped} more failed requests in the last minute were not shown)")
                self.window, self.count, self.dropped = now, 0, 0
            self.count += 1
            if self.count > LOG_BURST:
                self.dropped += 1
                return
        self.log(line)


def _response(
    status: HTTPStatus, body, kind: str = "application/json", *, close: bool = False, head_only: bool = False
) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {kind}",
        f"Content-Length: {len(data)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if head_only else data)


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("web").joinpath(name).read_bytes()


def make_server(
    weights: Weights | StrPath, host: str = "127.0.0.1", port: int = 8000, *, log: Callable[[str], object] | None = None
) -> DigitServer:
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
            raise MnistfxError(f"port {port} on {host} is in use: pass another `port` (0 picks a free one)") from None
        if e.errno == errno.EACCES:
            raise MnistfxError(f"port {port} needs privileges to listen on: pass a port above 1023") from None
        raise MnistfxError(
            f"cannot listen on {host} port {port} ({e.strerror or e}): pass a host "
            "address of this machine, such as 127.0.0.1"
        ) from None
