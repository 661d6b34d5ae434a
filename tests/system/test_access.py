"""Access control end to end: API keys and per-client limits on the real server over real sockets
(`enhancer serve`, the real SavedModel), plus what only an in-process app lets a test see (the
comparison function that was called, a fake clock for the megapixel bucket, the OpenAPI document).

Two servers are started for the module: one with API keys (clients are keys) and one without
(clients are addresses). On Linux every 127.x.y.z address is local, so a test can connect from
127.0.0.2, the one proxy the keyless server trusts, or from 127.0.0.1, which it must not trust
although uvicorn trusts it by default: that also shows `enhancer serve` hands its list to uvicorn.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import socket
import subprocess
import sys
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
    make_settings,
    multipart_body,
    photo_like,
    read_response,
    running_app,
    serving,
)

from enhancer.api import auth, create_app

KEY_A = "ka-Qw7Ls2Xp9Rv4Tn6Bz3Hd"
KEY_B = "kb-Mf5Yc8Gj1Pk0Ue7Wa2Sx"  # from the keys file
WRONG = "ka-Qw7Ls2Xp9Rv4Tn6Bz3Hx"  # KEY_A with the last character changed: same length
assert len(WRONG) == len(KEY_A) and WRONG != KEY_A

TINY_PNG = encode_bgr(photo_like(40, 40, seed=3), ".png")
PROXY = "127.0.0.2"  # the keyless server's trusted proxy
NOT_A_PROXY = "127.0.0.1"


class Server:
    """`python -m enhancer.cli serve` with the given ENHANCER_* settings, on a free port."""

    def __init__(self, workdir: Path, **settings):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENHANCER_", "OPENCV_"))}
        env.update(
            ENHANCER_MODEL_DIR=str(MODEL_DIR),
            ENHANCER_UPSCALE_MODEL_DIRS="none",  # only the model named above, also once weights/upscale-x* exist
            ENHANCER_PORT=str(self.port),
            ENHANCER_TILE_SIZE="128",
            ENHANCER_MAX_BATCH_SIZE="4",
            ENHANCER_INTRA_OP_THREADS="2",
            ENHANCER_INTER_OP_THREADS="1",
            ENHANCER_PASS_THROUGH_JPEG_QUALITY="101",
        )
        env.update({f"ENHANCER_{k.upper()}": str(v) for k, v in settings.items()})
        self.log_path = workdir / f"server-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "enhancer.cli", "serve"], cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited at start-up:\n{self.output()}"
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except (OSError, ValueError):  # ValueError: before the server listens, a connection
                pass  # to its port can land on itself (TCP self-connect) and read its own request
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method, path, body=b"", headers=None, source="127.0.0.1"):
        """One request on its own connection, sent from the local address `source`."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=120, source_address=(source, 0)) as sock:
            head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            sock.sendall(head.encode() + b"\r\n" + body)
            return read_response(sock)

    def upload(self, data=TINY_PNG, headers=None, source=PROXY):
        return self.request("POST", "/upscale", multipart_body(data), {**UPLOAD_HEADERS, **(headers or {})}, source)

    def metrics(self, headers=None) -> str:
        status, _, body = self.request("GET", "/metrics", headers=headers)
        assert status == 200, body
        return body.decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.log.close()


class HeldUpload:
    """An upload sent all but its last bytes: in flight at the server (holding its client's slot)
    until `finish()`."""

    def __init__(self, server: Server, headers: dict):
        self.body = multipart_body(TINY_PNG)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=120, source_address=(PROXY, 0))
        head = (
            f"POST /upscale HTTP/1.1\r\nHost: test\r\nContent-Length: {len(self.body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        )
        self.sock.sendall(head.encode() + b"\r\n" + self.body[:-100])

    def finish(self):
        self.sock.sendall(self.body[-100:])
        try:
            return read_response(self.sock)
        finally:
            self.sock.close()


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_for_uploads_in_flight(server: Server, n: int, headers=None) -> None:
    deadline = time.monotonic() + 60
    while metric(server.metrics(headers), "enhancer_uploads_in_flight") < n:
        assert time.monotonic() < deadline, "the held upload never reached the app"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Both servers, started together so their model loads overlap."""
    workdir = tmp_path_factory.mktemp("access")
    keys_file = workdir / "api_keys"
    keys_file.write_text(f"# one key per line\n\n{KEY_B}\n")
    keyed = Server(
        workdir,
        api_keys=KEY_A,
        api_keys_file=keys_file,
        metrics_require_key="true",
        max_concurrent_per_client=1,
        log_level="debug",  # the most the server ever logs: still no key in it
    )
    open_ = Server(
        workdir,
        forwarded_allow_ips="127.0.0.2",
        max_concurrent_per_client=1,
        rate_limit_mpx_per_minute=0.06,  # 0.001 MP/s: a 200x200 image (0.04 MP) takes 40 s to earn
    )
    try:
        keyed.wait_ready()
        open_.wait_ready()
        yield keyed, open_
    finally:
        keyed.stop()
        open_.stop()


@pytest.fixture(scope="module")
def keyed(servers):
    return servers[0]


@pytest.fixture(scope="module")
def keyless(servers):
    return servers[1]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- API keys over real HTTP ---------------------------------------------------------------------


def test_no_key_wrong_key_right_key(keyed):
    status, headers, body = keyed.upload()
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <key>" in json.loads(body)["detail"]
    assert_documented(json.loads(keyed.request("GET", "/openapi.json")[2]), 401, json.loads(body)["detail"])

    status, headers, body = keyed.upload(headers=bearer(WRONG))
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer") and 'error="invalid_token"' in headers["www-authenticate"]
    assert json.loads(body)["detail"].startswith("the API key in the Authorization header is not valid")
    assert WRONG.encode() not in body

    status, headers, body = keyed.upload(headers={"Authorization": f"Basic {KEY_A}"})
    assert status == 401 and KEY_A.encode() not in body

    for key in (KEY_A, KEY_B):  # from ENHANCER_API_KEYS and from ENHANCER_API_KEYS_FILE
        status, headers, body = keyed.upload(headers=bearer(key))
        assert status == 200, body
        assert headers["content-type"] == "image/png" and body.startswith(b"\x89PNG")


def test_probes_are_open_and_metrics_need_a_key(keyed):
    assert keyed.request("GET", "/healthz")[0] == 200
    assert keyed.request("GET", "/readyz")[0] == 200
    status, _, body = keyed.request("GET", "/access")
    assert (status, json.loads(body)) == (200, {"api_key_required": True, "key_accepted": False})
    status, _, body = keyed.request("GET", "/access", headers=bearer(KEY_B))
    assert (status, json.loads(body)) == (200, {"api_key_required": True, "key_accepted": True})
    assert keyed.request("GET", "/access", headers=bearer(WRONG))[0] == 401

    status, headers, _ = keyed.request("GET", "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    text = keyed.metrics(bearer(KEY_A))
    # refusals are counted under their route, like every other answer
    assert metric(text, "enhancer_http_requests_total", '{method="POST",route="/upscale",status="401"}') >= 3
    assert metric(text, "enhancer_http_requests_total", '{method="GET",route="/metrics",status="401"}') >= 1
    for secret in (KEY_A, KEY_B, WRONG):
        assert secret not in text


def test_a_client_at_its_limit_gets_429_while_another_is_served(keyed):
    held = HeldUpload(keyed, bearer(KEY_A))  # KEY_A's one slot is taken while its body arrives
    wait_for_uploads_in_flight(keyed, 1, bearer(KEY_B))

    status, headers, body = keyed.upload(headers=bearer(KEY_A))
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert "ENHANCER_MAX_CONCURRENT_PER_CLIENT" in json.loads(body)["detail"]
    assert_documented(json.loads(keyed.request("GET", "/openapi.json")[2]), 429, json.loads(body)["detail"])

    status, _, body = keyed.upload(headers=bearer(KEY_B))  # a different key is a different client
    assert status == 200, body

    status, _, body = held.finish()
    assert status == 200, body
    status, _, body = keyed.upload(headers=bearer(KEY_A))  # its slot is free again
    assert status == 200, body

    text = keyed.metrics(bearer(KEY_B))
    assert metric(text, "enhancer_http_requests_total", '{method="POST",route="/upscale",status="429"}') == 1
    assert metric(text, "enhancer_client_limit_refusals_total", '{limit="concurrency"}') == 1
    assert metric(text, "enhancer_clients_limited") == 1
    assert "key:" not in text  # clients are never labels


def test_no_key_reaches_the_log(keyed):
    """Runs after the others: every key was used, right and wrong, at log level debug."""
    log = keyed.output()
    assert "API keys: 2 configured" in log
    assert "POST /upscale HTTP/1.1" in log  # the access log is on
    for secret in (KEY_A, KEY_B, WRONG):
        assert secret not in log


# --- per-client limits by address over real HTTP ----------------------------------------------------


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(keyless):
    client_a = {"X-Forwarded-For": "198.51.100.1"}
    held = HeldUpload(keyless, client_a)  # via the trusted proxy: client 198.51.100.1
    wait_for_uploads_in_flight(keyless, 1)

    # the same header from a peer that is no trusted proxy is ignored: that client is 127.0.0.1
    status, _, body = keyless.upload(headers=client_a, source=NOT_A_PROXY)
    assert status == 200, body
    # from the trusted proxy it is believed: 198.51.100.1 is at its limit
    status, headers, _ = keyless.upload(headers=client_a)
    assert status == 429 and int(headers["retry-after"]) >= 1
    # a client that sends its own header cannot pose as 198.51.100.1: the proxy's entry counts
    status, _, body = keyless.upload(headers={"X-Forwarded-For": "198.51.100.1, 198.51.100.2"})
    assert status == 200, body
    status, _, body = keyless.upload(headers={"X-Forwarded-For": "198.51.100.3"})
    assert status == 200, body

    status, _, body = held.finish()
    assert status == 200, body
    text = keyless.metrics()
    assert metric(text, "enhancer_client_limit_refusals_total", '{limit="concurrency"}') == 1
    assert "198.51.100" not in text


def test_megapixels_are_charged_from_the_header_before_decoding(keyless):
    client = {"X-Forwarded-For": "198.51.100.7"}
    image = encode_bgr(photo_like(200, 200, seed=9), ".png")  # 0.04 MP of a 0.06 MP minute
    status, _, body = keyless.upload(image, client)
    assert status == 200, body
    decodes = metric(keyless.metrics(), "enhancer_stage_duration_seconds_count", '{stage="decode"}')

    status, headers, body = keyless.upload(image, client)
    assert status == 429
    # 0.02 MP left, 0.04 MP needed, 0.001 MP/s: 20 s, less what passed since the first upload
    assert 10 <= int(headers["retry-after"]) <= 20
    detail = json.loads(body)["detail"]
    assert "ENHANCER_RATE_LIMIT_MPX_PER_MINUTE" in detail and "0.04 MP" in detail
    text = keyless.metrics()
    assert metric(text, "enhancer_stage_duration_seconds_count", '{stage="decode"}') == decodes  # not decoded
    assert metric(text, "enhancer_client_limit_refusals_total", '{limit="megapixels"}') == 1
    assert metric(text, "enhancer_clients_limited") == 2  # 198.51.100.1 earlier, 198.51.100.7 now

    status, _, body = keyless.upload(image, {"X-Forwarded-For": "198.51.100.8"})  # others unaffected
    assert status == 200, body


# --- in-process: what a real server cannot show ---------------------------------------------------


@pytest.mark.anyio
async def test_keys_are_compared_as_digests_with_compare_digest_and_no_early_exit(saved_model, monkeypatch):
    """A wrong key of the right length runs exactly the same comparisons as the right key: every
    stored SHA-256 digest against the presented key's digest, by hmac.compare_digest."""
    other = "kc-" + "Tz4" * 6
    app = create_app(make_settings(api_keys=f"{KEY_A},{other}"), models=serving(saved_model))  # KEY_A first
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    async with running_app(app) as client:
        seen = {}
        for key in (KEY_A, WRONG):
            calls.clear()
            r = await client.post("/upscale", files={"image": ("a.png", TINY_PNG)}, headers=bearer(key))
            assert r.status_code == (200 if key == KEY_A else 401)
            seen[key] = list(calls)
    assert len(seen[KEY_A]) == len(seen[WRONG]) == 2  # both stored keys, though KEY_A matched the first
    for pairs in seen.values():
        for a, b in pairs:
            assert len(a) == len(b) == 32  # digests, never the keys themselves
            assert KEY_A.encode() not in (a, b) and WRONG.encode() not in (a, b)


@pytest.mark.anyio
async def test_megapixel_bucket_refills_at_its_rate_on_a_fake_clock(saved_model):
    now = [5000.0]
    app = create_app(make_settings(rate_limit_mpx_per_minute=0.06), models=serving(saved_model), clock=lambda: now[0])
    image = encode_bgr(photo_like(200, 200, seed=9), ".png")  # 0.04 MP
    async with running_app(app) as client:

        async def send():
            return await client.post("/upscale", files={"image": ("a.png", image)})

        assert (await send()).status_code == 200
        r = await send()
        assert (r.status_code, r.headers["retry-after"]) == (429, "20")  # 0.02 MP short at 0.001 MP/s
        now[0] += 10
        r = await send()
        assert (r.status_code, r.headers["retry-after"]) == (429, "10")  # half of it has come back
        now[0] += 10
        assert (await send()).status_code == 200
        assert (await send()).status_code == 429


@pytest.mark.anyio
async def test_openapi_declares_the_bearer_scheme_only_when_keys_are_on(saved_model):
    app = create_app(make_settings(api_keys=KEY_A, max_concurrent_per_client=2), models=serving(saved_model))
    async with running_app(app, wait_ready=False) as client:
        doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["APIKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from the server's operator, sent as `Authorization: Bearer <key>`.",
    }
    upscale = doc["paths"]["/upscale"]["post"]
    assert upscale["security"] == [{"APIKey": []}]  # /docs sends the Authorize key on this call
    assert {"401", "429"} <= set(upscale["responses"])
    for path in ("/healthz", "/readyz", "/metrics", "/access"):
        assert "security" not in doc["paths"][path]["get"], path

    plain = create_app(make_settings(), models=serving(saved_model))
    async with running_app(plain, wait_ready=False) as client:
        doc = (await client.get("/openapi.json")).json()
        assert (await client.get("/access")).json() == {"api_key_required": False, "key_accepted": False}
        text = (await client.get("/metrics")).text
    assert "securitySchemes" not in doc["components"]
    assert "security" not in doc["paths"]["/upscale"]["post"]
    assert not {"401", "429"} & set(doc["paths"]["/upscale"]["post"]["responses"])
    assert "enhancer_clients_limited" not in text  # no limits, no limit metrics


@pytest.mark.anyio
async def test_without_settings_no_access_middleware_is_installed(saved_model):
    app = create_app(make_settings(), models=serving(saved_model))
    names = {m.cls.__name__ for m in app.user_middleware}
    assert names == {
        "MetricsMiddleware",
        "MultipartFramingMiddleware",
        "PixelHoldMiddleware",
        "UploadGateMiddleware",
        "UploadLimitMiddleware",
    }
    assert app.state.client_limits is None and not app.state.api_keys.required
