"""`mnistfx serve`: the JSON API on real MNIST digits, its answers to bad and slow requests, and
the command's start and stop (the page itself: test_serve_page.py)."""

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli
from PIL import Image

import mnistfx
from mnistfx.trained import server as serving


def png(image, side=280) -> bytes:
    """A uint8 28×28 image enlarged to ``side`` pixels, as PNG bytes (as the page sends its canvas)."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((side, side), Image.BILINEAR).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def served(trained_tuned):
    server = mnistfx.make_server(trained_tuned, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(target, method, path, body=None, headers=None):
    """``(status, decoded JSON or bytes, response)`` of one request to a server (or a (host, port)) on a
    new connection."""
    conn = http.client.HTTPConnection(*(target if isinstance(target, tuple) else target.server_address[:2]), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        data = reply.read()
        kind = reply.getheader("Content-Type", "")
        return reply.status, json.loads(data) if kind.startswith("application/json") else data, reply
    finally:
        conn.close()


def test_health_names_the_model(served):
    status, body, _ = request(served, "GET", "/api/health")
    assert (status, body) == (200, {"status": "ok", "model": "tuned", "members": None})


def test_the_page_and_its_files_are_served_from_the_package(served):
    status, page, reply = request(served, "GET", "/")
    assert status == 200 and reply.getheader("Content-Type").startswith("text/html")
    assert b'src="app.js"' in page and b'href="style.css"' in page and b"http" not in page  # nothing from elsewhere
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, body, reply = request(served, "GET", path)
        assert status == 200 and reply.getheader("Content-Type").startswith(kind) and len(body) > 500
    status, body, _ = request(served, "GET", "/../weights.safetensors")
    assert status == 404 and "no such page" in body["error"]


def test_predictions_are_those_of_mnistfx_predict_on_the_same_files(served, trained_tuned, mnist, tmp_path):
    w = mnistfx.load_model_weights(trained_tuned)
    paths, answers = [], []
    for i in range(20):
        data = png(mnist.test_images[i])
        (tmp_path / f"{i}.png").write_bytes(data)
        paths.append(tmp_path / f"{i}.png")
        status, answer, _ = request(served, "POST", "/api/predict", data, {"Content-Type": "image/png"})
        assert status == 200, answer
        answers.append(answer)
    seen = mnistfx.read_digit_images(paths)
    expected = w.probabilities(seen)
    for answer, image, probs in zip(answers, seen, expected, strict=True):
        assert answer["image"] == image.tolist()
        assert answer["label"] == int(probs.argmax())
        assert np.allclose(answer["probabilities"], probs.numpy(), atol=1e-6)
        assert abs(sum(answer["probabilities"]) - 1) < 1e-4 and 0 < answer["ms"] < 5000
    labels = [a["label"] for a in answers]
    assert sum(p == int(t) for p, t in zip(labels, mnist.test_labels[:20], strict=True)) >= 19


def test_an_ensemble_is_served(mnist, tmp_path):
    config = mnistfx.recipe("tuned", epochs=1, train_size=1600, val_size=500, compile=False, ensemble=2)
    weights = mnistfx.save_run(mnistfx.train(config, data=mnist, test=False), tmp_path / "run")["weights"]
    server = mnistfx.make_server(weights, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert request(server, "GET", "/api/health")[1]["members"] == 2
        status, answer, _ = request(server, "POST", "/api/predict", png(mnist.test_images[0]))
        w = mnistfx.load_model_weights(weights)
        assert status == 200 and answer["label"] == int(w.probabilities(mnist.test_images[:1]).argmax())
    finally:
        server.shutdown()
        server.server_close()


def test_bad_bodies_get_400_with_a_json_error(served, mnist):
    blank = png(np.zeros((28, 28)))
    cut = png(mnist.test_images[0])[:200]
    for body, fragment in (
        (b"not an image", "not an image file"),
        (blank, "shows no digit"),
        (cut, "not an image"),
        (b"", "not an image"),
    ):
        status, answer, _ = request(served, "POST", "/api/predict", body)
        assert status == 400 and fragment in answer["error"], answer
    status, answer, _ = request(served, "POST", "/api/other", b"x")
    assert status == 404 and "error" in answer


def raw(server, data: bytes, wait: float = 10) -> bytes:
    """What the server answers to these bytes on one connection (until it closes it)."""
    with socket.create_connection(server.server_address[:2], timeout=wait) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_over_the_limit_gets_413_unread(served):
    t0 = time.perf_counter()
    reply = raw(served, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ") and b'"error"' in reply and b"smaller image" in reply
    assert time.perf_counter() - t0 < 5  # answered at once, not after reading (or waiting for) the body


@pytest.mark.parametrize(
    "head, status",
    [
        (b"POST /api/predict HTTP/1.1\r\nHost: x\r\n\r\n", b"411"),
        (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"411"),
        (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", b"400"),
        (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\nab", b"400"),  # a latin-1 digit
        (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", b"400"),
        (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", b"400"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414"),
    ],
)
def test_malformed_requests_get_an_error_status_as_json(served, head, status):
    reply = raw(served, head)
    assert reply.startswith(b"HTTP/1.1 " + status) or reply.startswith(b"HTTP/1.0 " + status), reply[:80]
    assert b'{"error": ' in reply


def test_a_slow_client_does_not_stall_the_others(served, mnist):
    with socket.create_connection(served.server_address[:2]) as slow:
        slow.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"\x89PNG")
        t0 = time.perf_counter()
        status, answer, _ = request(served, "POST", "/api/predict", png(mnist.test_images[1]))
        assert status == 200 and answer["label"] == int(mnist.test_labels[1])
        assert time.perf_counter() - t0 < 5
        slow.shutdown(socket.SHUT_WR)  # the body ends short: the server answers 400, not a prediction
        reply = slow.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"ended before its Content-Length" in reply


def test_the_server_keeps_answering_after_bad_requests_and_keeps_connections_alive(served, mnist):
    for _ in range(3):
        raw(served, b"GARBAGE\r\n\r\n")
    conn = http.client.HTTPConnection(*served.server_address[:2], timeout=30)
    try:
        for i in range(3):  # one connection, several requests (HTTP/1.1 keep-alive)
            conn.request("POST", "/api/predict", body=png(mnist.test_images[i]))
            reply = conn.getresponse()
            assert reply.status == 200 and json.loads(reply.read())["label"] == int(mnist.test_labels[i])
    finally:
        conn.close()


def test_port_in_use_and_bad_weights_are_one_line_errors(capsys, trained_tuned, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run_cli(capsys, "serve", str(trained_tuned), "--port", str(taken.getsockname()[1]))
    assert_one_line_error(code, err, "is in use", "--port")
    code, _, err = run_cli(capsys, "serve", str(tmp_path / "missing.safetensors"))
    assert_one_line_error(code, err, "missing.safetensors")
    code, _, err = run_cli(capsys, "serve", str(trained_tuned), "--host", "no.such.host.invalid", "--port", "0")
    assert_one_line_error(code, err, "cannot listen on no.such.host.invalid")
    code, _, err = run_cli(capsys, "serve", str(trained_tuned), "--port", "70000")
    assert_one_line_error(code, err, "70000")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_stops_the_command_cleanly(trained_tuned):
    # PYTHONFAULTHANDLER: if it does not stop, SIGABRT makes it print every thread's stack (what it waited for)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistfx", "serve", str(trained_tuned), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        # started as a shell's background job is: ignoring SIGINT, which a child inherits (seen once, from a
        # test worker); serve must stop on Ctrl-C all the same
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tuned from ") and "(Ctrl-C stops)" in line
        url = line.split(" at ")[1].split()[0]
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        assert request((host, int(port)), "GET", "/api/health")[0] == 200
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)  # about 0.5 s alone, 1.5 s with four busy processes on 2 cores
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail(f"serve did not stop within 20 s of Ctrl-C; its threads:\n{proc.communicate(timeout=20)[1]}")
    finally:
        proc.kill()
    assert proc.returncode == 0 and err.strip() == "stopped" and "Traceback" not in err, err


def test_an_opaque_rgba_png_is_read_as_its_gray_version(served, mnist):
    """A canvas's PNG has an alpha channel that hides nothing: a light digit on black stays one."""
    gray = Image.open(io.BytesIO(png(mnist.test_images[2])))
    out = io.BytesIO()
    gray.convert("RGBA").save(out, "PNG")
    answers = [request(served, "POST", "/api/predict", body)[1] for body in (out.getvalue(), png(mnist.test_images[2]))]
    assert answers[0]["image"] == answers[1]["image"] and answers[0]["label"] == int(mnist.test_labels[2])


def test_a_client_trickling_its_headers_is_cut_off(served, monkeypatch):
    monkeypatch.setattr(serving, "HEADER_DEADLINE", 1.0)
    with socket.create_connection(served.server_address[:2], timeout=10) as slow:
        t0 = time.perf_counter()
        slow.sendall(b"GET / HTTP/1.1\r\n")
        for _ in range(8):  # a byte every 0.4 s: never idle for long, but never done
            time.sleep(0.4)
            try:
                slow.sendall(b"X")
            except OSError:
                break
        assert slow.recv(100) == b"" and time.perf_counter() - t0 < 4  # closed after about a second


def test_headers_are_capped_in_all_not_only_line_by_line(served):
    """99 headers of 1,000 bytes: each line is allowed, their sum is not."""
    head = b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(99))
    reply = raw(served, head + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ") and b"over 16,384 bytes" in reply
    assert raw(
        served, b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 8000 + b"\r\nConnection: close\r\n\r\n"
    ).startswith(b"HTTP/1.1 200 ")


def _waiting(server, client: socket.socket) -> bool:
    """Whether ``server`` has a thread waiting on ``client`` (for its request, or for it to take an answer)."""
    with server.lock:
        return any(h.client_address[:2] == client.getsockname()[:2] for h in server.waiting)


def test_slow_clients_on_every_slot_do_not_keep_a_real_client_out(served, mnist, monkeypatch):
    """Every slot taken by a client that sends a byte and waits: a new client is still answered,
    each time, and the client that waited longest for its request is the one cut off."""
    # The slow clients' own deadlines must not run out first: on a loaded 2-core machine, opening 64
    # connections and five predictions once took over IDLE_TIMEOUT, and the first client got its 400.
    monkeypatch.setattr(serving._Handler, "timeout", 120)
    monkeypatch.setattr(serving, "BODY_DEADLINE", 120)
    slow = []
    try:
        for _ in range(serving.MAX_CONNECTIONS):
            s = socket.create_connection(served.server_address[:2], timeout=10)
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n\x89")
            slow.append(s)
            # in, its thread waiting on it, before the next: their waits then begin in the list's order (threads
            # started together begin in the order the machine runs them: on a loaded one, slow[1] before slow[0])
            deadline = time.monotonic() + 60
            while not _waiting(served, s):
                assert time.monotonic() < deadline, "the server never waited on a connection it accepted"
                time.sleep(0.001)
        for i in range(5):
            t0 = time.perf_counter()
            status, answer, _ = request(served, "POST", "/api/predict", png(mnist.test_images[i]))
            assert status == 200 and answer["label"] == int(mnist.test_labels[i])
            assert time.perf_counter() - t0 < 5
        assert slow[0].recv(100) == b""  # the one that waited longest made room
        slow[-1].settimeout(0.2)
        with pytest.raises(TimeoutError):  # the newest still waits for its body (or its deadline)
            slow[-1].recv(100)
    finally:
        for s in slow:
            s.close()


def test_a_body_that_is_not_read_is_never_taken_for_the_next_request(served):
    """A GET with a body, or a POST elsewhere: one answer, and the connection closes (behind a proxy,
    the body would otherwise be a second, smuggled request)."""
    inner = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    for head in (
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
        b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
    ):
        reply = raw(served, head % len(inner) + inner)
        assert reply.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in reply, reply


def test_a_target_that_is_no_url_gets_400_as_json(served):
    reply = raw(served, b"GET http://[/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b'{"error": "the request\'s path is not a URL path"}' in reply


def test_head_answers_get_s_headers_without_a_body(served):
    status, body, reply = request(served, "HEAD", "/")
    assert (
        status == 200 and body == b"" and int(reply.getheader("Content-Length")) == len(request(served, "GET", "/")[1])
    )


def test_expect_100_continue_is_said_only_to_a_body_that_will_be_read(served, mnist):
    reply = raw(
        served, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99000000\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply
    image = png(mnist.test_images[0])
    with socket.create_connection(served.server_address[:2], timeout=10) as s:
        s.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(image)
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
        s.sendall(image)
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"label": %d' % int(mnist.test_labels[0]) in reply


def test_a_client_cannot_flood_the_operator_s_log(monkeypatch):
    lines = []
    log = serving._Log(lines.append)
    for i in range(50):
        log(f"error {i}")
    assert lines == [f"error {i}" for i in range(serving.LOG_BURST)]
    log.window -= 60  # a minute later: what was held back is counted, and lines flow again
    log("error 50")
    assert lines[-2:] == ["(45 more failed requests in the last minute were not shown)", "error 50"]


def test_only_a_loopback_address_is_local(tuned_weights):
    for host, local in (("127.1", True), ("127.0.0.1", True), ("0.0.0.0", False)):
        server = mnistfx.make_server(tuned_weights, host, 0)
        try:
            assert server.local_only is local, host
        finally:
            server.server_close()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n",  # which one?
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length : %d\r\n\r\n",  # no header: the rest is a "body"
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Content-Length: %d\r\n\r\n",  # folded onto X-A
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\nX-Len: %d\r\n\r\n",  # chunked, or not?
    ],
)
def test_headers_that_do_not_say_plainly_where_a_request_ends_are_refused(served, head):
    """A proxy in front may read such headers otherwise than the server: one answer, then the connection
    closes, so the bytes after them are never taken for a second request."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = raw(served, head % len(inner) + inner)
    assert reply.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in reply and b"smuggled" not in reply, reply


def test_clients_that_do_not_read_their_answers_do_not_keep_a_real_client_out(served, mnist):
    """Every slot taken by a client that pipelines requests and never reads: the server's writes block,
    and those connections are cut off to make room as idle ones are."""
    greedy = []
    try:
        for _ in range(serving.MAX_CONNECTIONS + 6):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.connect(served.server_address[:2])
            s.setblocking(False)
            try:
                s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 400)
            except BlockingIOError:
                pass
            greedy.append(s)
        time.sleep(1)  # the server's threads are blocked writing pages no one reads
        for i in range(3):
            status, answer, _ = request(served, "POST", "/api/predict", png(mnist.test_images[i]))
            assert status == 200 and answer["label"] == int(mnist.test_labels[i]), (
                answer,
                served.open,
                served.cut,
                len(served.waiting),
            )
    finally:
        for s in greedy:
            s.close()


def test_images_beyond_the_queue_are_answered_503_at_once(served, mnist):
    """While an image is being read, three more from one client wait (a fourth is 503), and up to eight in
    all from several clients (loopback addresses 127.0.0.x are clients of their own)."""
    body = png(mnist.test_images[0])
    answers = []

    def post(client):
        conn = http.client.HTTPConnection(*served.server_address[:2], timeout=60, source_address=(client, 0))
        try:
            conn.request("POST", "/api/predict", body=body)
            answers.append(conn.getresponse().status)
        finally:
            conn.close()

    def queue_filled_to(n):
        deadline = time.monotonic() + 20
        while served.predictor.queue._value > serving.MAX_QUEUED + 1 - n and time.monotonic() < deadline:
            time.sleep(0.05)

    per_client = serving.MAX_QUEUED_PER_CLIENT
    clients = [f"127.0.0.{i}" for i in range(2, 9)]
    waiting = []
    with served.predictor.lock:  # an image being read for a long time
        for client in (c for c in clients for _ in range(per_client)):
            if len(waiting) == serving.MAX_QUEUED + 1:
                break
            waiting.append(threading.Thread(target=post, args=(client,)))
            waiting[-1].start()
            queue_filled_to(len(waiting))
        conn = http.client.HTTPConnection(*served.server_address[:2], timeout=30, source_address=(clients[0], 0))
        conn.request("POST", "/api/predict", body=body)
        reply = conn.getresponse()
        assert reply.status == 503 and "(3 of them yours)" in json.loads(reply.read())["error"]
        conn.close()
        status, answer, _ = request(served, "POST", "/api/predict", body)  # 127.0.0.1: no image of its own waits
        assert status == 503 and "8 images wait to be read already (0 of them yours)" in answer["error"]
    for t in waiting:
        t.join(timeout=60)
    assert answers == [200] * (serving.MAX_QUEUED + 1)


def test_a_posted_image_is_bounded_by_the_server_s_own_pixel_limit(served):
    out = io.BytesIO()
    Image.new("L", (2500, 2000)).save(out, "PNG")  # 5 megapixels: fine for predict, not for the page's API
    status, answer, _ = request(served, "POST", "/api/predict", out.getvalue())
    assert status == 400 and "images of up to 4,000,000 pixels" in answer["error"]
