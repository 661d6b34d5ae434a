"""The OpenAPI document as a contract: what it declares for POST /upscale is what the server does.

Every error status has an example of its own, and each example is the server's real answer for
that status, up to numbers: the statuses cheap to provoke are checked here, the others where
their situation is built (413, 500, 503 and 504 in test_http, 401 and 429 in test_access, 408 in
test_server_process). Then schemathesis generates requests from the document, sends them to the
app in-process, and checks every answer against the declared statuses, media types, headers and
bodies, and that none is a 5xx.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from helpers import assert_documented, decode_bytes, encode_bgr, make_settings, photo_like, running_app, serving
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi as schemathesis_asgi

from enhancer.api import create_app

ERROR_STATUSES = {400, 408, 413, 415, 422, 500, 503, 504}
SUCCESS_HEADERS = {"Content-Disposition", "Server-Timing", "X-Enhancer-Model", "X-Enhancer-Passed-Through"}
KEY = "contract-key-Kp3Vd8Qs1Zw6"


@pytest.fixture(scope="module")
async def client(saved_model):
    async with running_app(create_app(make_settings(), models=serving(saved_model))) as c:
        yield c


@pytest.fixture(scope="module")
async def spec(client) -> dict:
    return (await client.get("/openapi.json")).json()


def _upload_responses(document: dict) -> dict:
    return document["paths"]["/upscale"]["post"]["responses"]


def _example(response: dict) -> str:
    return response["content"]["application/json"]["example"]["detail"]


@pytest.mark.anyio
async def test_each_error_status_has_an_example_of_its_own(spec, saved_model):
    responses = _upload_responses(spec)
    assert ERROR_STATUSES <= {int(status) for status in responses}
    # with API keys and a per-client limit, 401 and 429 are declared too
    guarded = create_app(make_settings(api_keys=KEY, max_concurrent_per_client=1), models=serving(saved_model))
    async with running_app(guarded, wait_ready=False) as c:
        guarded_responses = _upload_responses((await c.get("/openapi.json")).json())
    assert guarded_responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert guarded_responses["429"]["headers"]["Retry-After"]["required"] is True

    errors = {**{s: r for s, r in responses.items() if s != "200"}, **{s: guarded_responses[s] for s in ("401", "429")}}
    examples = {status: _example(response) for status, response in errors.items()}
    assert len(set(examples.values())) == len(examples), examples  # no two statuses share an example
    for status, response in errors.items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, status


@pytest.mark.anyio
async def test_the_examples_are_what_the_server_answers(client, spec):
    jpeg = encode_bgr(photo_like(64, 64, seed=2), ".jpg")
    answers = {
        400: await client.post("/upscale", files={"image": ("a.jpg", jpeg[: len(jpeg) // 2])}),
        415: await client.post("/upscale", files={"image": ("a.jpg", b"Dear diary,\nnot an image.\n")}),
        422: await client.post("/upscale", files={"picture": ("a.jpg", jpeg)}),
    }
    for status, answer in answers.items():
        assert answer.status_code == status, answer.text
        assert_documented(spec, status, answer.json()["detail"])


@pytest.mark.anyio
async def test_the_declared_headers_are_sent(client, spec):
    responses = _upload_responses(spec)
    declared = responses["200"]["headers"]
    assert set(declared) == SUCCESS_HEADERS
    assert responses["503"]["headers"]["Retry-After"]["required"] is True
    assert spec["paths"]["/readyz"]["get"]["responses"]["503"]["headers"]["Retry-After"]["required"] is True

    png = encode_bgr(photo_like(40, 40, seed=4), ".png")
    r = await client.post("/upscale", files={"image": ("a.png", png)})
    assert r.status_code == 200
    required = {name for name, header in declared.items() if header["required"]}
    assert required == SUCCESS_HEADERS - {"X-Enhancer-Passed-Through"}
    assert {name.lower() for name in required} <= set(r.headers)
    assert "x-enhancer-passed-through" not in r.headers
    off = await client.post("/upscale", params={"strength": "off"}, files={"image": ("a.png", png)})
    assert off.headers["x-enhancer-passed-through"] == "strength=off"


@pytest.mark.anyio
async def test_the_image_example_is_a_small_valid_image(client, spec):
    example = spec["paths"]["/upscale"]["post"]["requestBody"]["content"]["multipart/form-data"]["example"]["image"]
    data = example.encode("utf-8")
    assert data == example.encode("latin-1")  # plain ASCII: any text encoding sends the same bytes
    r = await client.post("/upscale", files={"image": ("example.bmp", data)})
    assert r.status_code == 200, r.text
    assert decode_bytes(r.content).shape == (4, 4, 3)


@pytest.mark.anyio
async def test_the_strength_parameter_is_documented(spec):
    strength = next(p for p in spec["paths"]["/upscale"]["post"]["parameters"] if p["name"] == "strength")
    assert strength["in"] == "query" and strength["required"] is False
    schema = strength["schema"]
    assert schema["examples"] == ["auto"] and schema["default"] == "auto"
    assert spec["components"]["schemas"]["Strength"]["enum"] == ["auto", "off", "light", "strong"]
    for word in ("`auto`", "`light`", "`strong`", "`off`"):
        assert word in strength["description"]


@pytest.mark.anyio
async def test_the_scale_parameter_is_documented_with_an_example(spec):
    scale = next(p for p in spec["paths"]["/upscale"]["post"]["parameters"] if p["name"] == "scale")
    assert scale["in"] == "query" and scale["required"] is False
    assert scale["schema"]["examples"] == [2] and scale["schema"]["default"] == 1
    schema = spec["components"]["schemas"]["Scale"]
    assert (schema["type"], schema["enum"]) == ("integer", [1, 2, 4])
    for words in ("width and height", "ENHANCER_MAX_OUTPUT_PIXELS", "strength `off`"):
        assert words in scale["description"]
    responses = _upload_responses(spec)
    assert "ENHANCER_MAX_OUTPUT_PIXELS" in responses["413"]["description"]
    assert "`scale`" in responses["422"]["description"] and "`scale`" in responses["200"]["description"]


# --- schema-driven fuzzing ------------------------------------------------------------------------

#: Answers must be declared, of a declared media type, with the declared headers and body schema,
#: and never a 5xx. (Schemathesis' "valid data is accepted" check is left out: a schema cannot say
#: that a binary field must hold a decodable image, so most generated files are rightly refused.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api(saved_model, upscalers):
    """The app's own OpenAPI document, with schemathesis calling the app in-process (it runs the
    app's lifespan itself, on its own event loop, until the module's tests are done). It serves a
    2x model too: the document's example request asks for `scale=2`."""
    app = create_app(make_settings(tile_overlap=48), models=serving(saved_model, upscalers[2]))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    readyz = schema["/readyz"]["GET"]
    deadline = time.monotonic() + 300
    while readyz.Case().call().status_code != 200:  # the models warm up after start-up
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.2)
    yield schema
    schemathesis_asgi.shutdown_lifespans()


#: Generated requests per operation (the explicit examples come first).
EXAMPLES_PER_OPERATION = 30


def _answers_as_declared(strategy, max_examples: int, statuses: set[int]) -> None:
    """Send `max_examples` cases drawn from `strategy` and check each answer."""

    @given(case=strategy)
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        response = case.call()
        statuses.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    check()


def test_generated_requests_get_declared_answers(api):
    operations = [result.ok() for result in api.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /upscale", "GET /readyz", "GET /metrics"}
    seen: dict[str, set[int]] = {}
    for operation in operations:
        statuses = seen.setdefault(f"{operation.method.upper()} {operation.path}", set())
        examples = operation.get_strategies_from_examples()
        if examples:  # the document's own examples, then requests generated from the schemas
            _answers_as_declared(st.one_of(*examples), 3, statuses)
        _answers_as_declared(operation.as_strategy(), EXAMPLES_PER_OPERATION, statuses)
    # the upload's example image reached the model, and generated bodies were refused in several ways
    assert 200 in seen["POST /upscale"] and len(seen["POST /upscale"] - {200}) >= 2, seen
