"""Latency of `mnistfx serve`'s POST /api/predict, from a client on this machine.

Starts `mnistfx serve WEIGHTS --port 0` as its own process, sends real MNIST test digits as the page
sends them (a 280×280 PNG), one request at a time on one kept-alive connection, and prints the
p50, p90 and p99 of the round trip (client clock) and of the server's own `ms`.

    python benchmarks/serve_latency.py [WEIGHTS] [--requests 1000]

Without WEIGHTS it serves a freshly initialised `tuned` (latency does not depend on training).
"""

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

import mnistfx


def canvas_png(image) -> bytes:
    """A 28×28 digit as the page sends it: a 280×280 PNG."""
    out = io.BytesIO()
    Image.fromarray(image.numpy()).resize((280, 280), Image.BILINEAR).save(out, "PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", nargs="?", help="weights to serve (default: a freshly initialised tuned)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = os.path.join(tmp, "tuned.safetensors")
            mnistfx.save_weights(weights, mnistfx.get_model("tuned").init(0), {"model": "tuned"})
        images = mnistfx.load_mnist().test_images
        bodies = [canvas_png(images[i % 1000]) for i in range(1000)]
        server = subprocess.Popen(
            [sys.executable, "-m", "mnistfx", "serve", weights, "--port", "0"], stdout=subprocess.PIPE, text=True
        )
        try:
            line = server.stdout.readline()
            host, port = line.split(" at http://")[1].split("/")[0].rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            rounds, inside = [], []
            for i in range(args.warmup + args.requests):
                t0 = time.perf_counter()
                conn.request(
                    "POST", "/api/predict", body=bodies[i % len(bodies)], headers={"Content-Type": "image/png"}
                )
                reply = conn.getresponse()
                answer = json.loads(reply.read())
                elapsed = 1000 * (time.perf_counter() - t0)
                if reply.status != 200:
                    raise SystemExit(f"request {i} failed: {reply.status} {answer}")
                if i >= args.warmup:
                    rounds.append(elapsed)
                    inside.append(answer["ms"])
            conn.close()
        finally:
            server.terminate()
            server.wait()
    for name, values in (("round trip (client)", rounds), ("inside the server (ms field)", inside)):
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        print(f"{name}: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms over {len(values)} requests")
    print(
        f"body: {np.mean([len(b) for b in bodies]):.0f} bytes on average; torch {mnistfx.environment('cpu')['torch']}; "
        f"{mnistfx.cpu_description()}"
    )


if __name__ == "__main__":
    main()
