"""The real server (`enhancer serve`: uvicorn, the real SavedModel) over real sockets.

What only a real server and a real socket show: a chunked upload without Content-Length is cut off
at the byte limit instead of being read to its end, a trickling upload is cut off at the read
deadline, and SIGTERM drains (readyz 503, new uploads 503, in-flight uploads finish with 200, the
process exits within ENHANCER_SHUTDOWN_TIMEOUT_S).

One server process serves the tests of this file in order; the drain test ends it. Waits poll with
generous bounds so a hang fails instead of blocking; nothing asserts how fast anything is, except
that the process exits within the shutdown bound it is configured with.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    BOUNDARY,
    MODEL_DIR,
    UPLOAD_HEADERS,
    assert_documented,
    encode_bgr,
    free_port,
    multipart_body,
    multipart_head,
    photo_like,
    read_response,
)

UPLOAD_LIMIT = 200_000
READ_TIMEOUT_S = 6


class Server:
    """`python -m enhancer.cli serve` in its own process, on a free port."""

    def __init__(self, workdir: Path, **settings):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENHANCER_", "OPENCV_"))}
        env.update(
            ENHANCER_MODEL_DIR=str(MODEL_DIR),
            ENHANCER_UPSCALE_MODEL_DIRS="none",  # only the model named above, also once weights/upscale-x* exist
            ENHANCER_PORT=str(self.port),
            ENHANCER_TILE_SIZE="128",
            ENHANCER_MAX_BATCH_SIZE="4",
            ENHANCER_LOG_LEVEL="info",
            **{f"ENHANCER_{k.upper()}": str(v) for k, v in settings.items()},
        )
        self.log_path = workdir / f"server-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "enhancer.cli", "serve"], cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout=300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited at start-up:\n{self.output()}"
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def metric(self, name: str) -> float:
        for line in self.get("/metrics")[2].decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(
        tmp_path_factory.mktemp("server"),
        max_upload_bytes=UPLOAD_LIMIT,
        request_read_timeout_s=READ_TIMEOUT_S,
        shutdown_timeout_s=60,
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def readable(sock: socket.socket, wait: float) -> bool:
    return bool(select.select([sock], [], [], wait)[0])


# --- limits while the body streams ---------------------------------------------------------------


def test_chunked_upload_over_the_limit_is_refused_without_being_read_to_the_end(server):
    """No Content-Length: the server counts bytes as they arrive and answers 413 past the limit,
    while the client could go on sending forever."""
    give_up_after = 64 * 1024 * 1024  # 320x the limit: reading to the end would take this long
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /upscale HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
        )
        sent = 0
        piece = b"\x89PNG\r\n\x1a\n" + b"\x00" * (32 * 1024 - 8)
        first = multipart_head() + piece
        chunk = first
        while not readable(sock, 0.01):
            assert sent < give_up_after, "the server kept reading far past the limit"
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            chunk = piece
        status, headers, body = read_response(sock)
    assert status == 413
    assert json.loads(body) == {
        "detail": f"the upload is larger than the {UPLOAD_LIMIT:,} byte limit (ENHANCER_MAX_UPLOAD_BYTES); send a smaller file"
    }
    assert headers["connection"] == "close"
    assert sent < 50 * UPLOAD_LIMIT  # stopped near the limit (plus what socket buffers held)


def test_a_trickling_upload_is_cut_off_at_the_read_deadline(server):
    declared = 100_000
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /upscale HTTP/1.1\r\nHost: test\r\n"
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n".encode()
            + multipart_head()
        )
        sent = 0
        for _ in range(100 * READ_TIMEOUT_S):  # one byte per 0.2 s: 20x the deadline at most
            if readable(sock, 0.2):
                break
            try:
                sock.sendall(b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        status, headers, body = read_response(sock)
        assert sock.recv(1) == b""  # and the connection is closed, not kept for the rest
    assert status == 408
    assert json.loads(body) == {
        "detail": f"the request body was not received within {READ_TIMEOUT_S} s (ENHANCER_REQUEST_READ_TIMEOUT_S); "
        "the connection is too slow or stalled: retry, or send a smaller file"
    }
    assert sent < declared
    assert_documented(json.loads(server.get("/openapi.json")[2]), 408, json.loads(body)["detail"])
    assert server.get("/readyz")[0] == 200  # nothing else was held up
    status, _, _ = server.request("POST", "/upscale", multipart_body(encode_bgr(photo_like(30, 30), ".png")), UPLOAD_HEADERS)
    assert status == 200


# --- SIGTERM -----------------------------------------------------------------------------------


class PartialUpload:
    """An upload sent all but its last bytes: in flight at the server until `finish()`."""

    def __init__(self, port: int, data: bytes):
        self.body = multipart_body(data)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(
            b"POST /upscale HTTP/1.1\r\nHost: test\r\n"
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(self.body)}\r\n\r\n".encode()
            + self.body[:-100]
        )

    def finish(self) -> tuple[int, dict, bytes]:
        self.sock.sendall(self.body[-100:])
        try:
            return read_response(self.sock)
        finally:
            self.sock.close()


def test_sigterm_drains_in_flight_uploads_refuses_new_ones_and_exits_within_the_bound(server):
    """Three uploads are in flight (bodies still arriving) when SIGTERM comes; all finish 200."""
    images = [encode_bgr(photo_like(150 + 20 * i, 170, seed=60 + i), ".png") for i in range(3)]
    uploads = [PartialUpload(server.port, data) for data in images]
    deadline = time.monotonic() + 60
    while server.metric("enhancer_uploads_in_flight") < 3:
        assert time.monotonic() < deadline, "the uploads never reached the app"
        time.sleep(0.02)

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    while server.get("/readyz")[0] != 503:
        assert time.monotonic() - signalled < 60
        time.sleep(0.02)
    status, headers, body = server.get("/readyz")
    assert status == 503 and json.loads(body)["detail"].startswith("the server is shutting down")
    status, headers, body = server.request(
        "POST", "/upscale", multipart_body(encode_bgr(photo_like(20, 20), ".png")), UPLOAD_HEADERS
    )
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert json.loads(body) == {"detail": "the server is shutting down and takes no new uploads; retry in a moment"}
    assert server.get("/healthz")[0] == 200

    results: list = [None] * 3

    def finish(i: int) -> None:
        results[i] = uploads[i].finish()

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for (status, headers, body), data in zip(results, images):
        assert status == 200, body
        assert headers["content-type"] == "image/png" and body.startswith(b"\x89PNG")

    server.process.wait(60 + 30)  # the configured bound, plus process teardown
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled < 60 + 30
    log = server.output()
    assert "SIGTERM: draining" in log and "3 in flight may finish" in log


def test_shutdown_is_bounded_by_one_timeout_even_with_a_stuck_upload(tmp_path):
    """A client that never finishes its upload cannot hold the process: at ENHANCER_SHUTDOWN_TIMEOUT_S
    after SIGTERM the connection is dropped and the process exits (one timeout, not one for the
    connections and another for the queue)."""
    timeout_s = 3
    server = Server(tmp_path, shutdown_timeout_s=timeout_s, request_read_timeout_s=600)
    try:
        server.wait_ready()
        stuck = PartialUpload(server.port, encode_bgr(photo_like(64, 64), ".png"))
        deadline = time.monotonic() + 60
        while server.metric("enhancer_uploads_in_flight") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout_s + 60)
        elapsed = time.monotonic() - signalled
        status, headers, body = read_response(stuck.sock, timeout=10)  # answered, not just dropped
        stuck.sock.close()
        assert status == 503 and headers["connection"] == "close"
        assert json.loads(body) == {
            "detail": "the server shut down before this upload was finished (it did not arrive or was not "
            "processed within ENHANCER_SHUTDOWN_TIMEOUT_S); retry"
        }
        assert elapsed >= timeout_s  # it did wait for the upload, then gave up on it
        assert elapsed < timeout_s + 30  # the bound, plus a generous margin for teardown
        log = server.output()
        assert "1 upload(s) still in flight at the shutdown deadline" in log
        assert "Exception in ASGI application" not in log and "dropping it" not in log
    finally:
        server.stop()
