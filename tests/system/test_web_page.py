"""The web page at `/`, driven in a real headless Chromium against the real server.

The server is started as a subprocess (`enhancer serve`) on a free port with the committed SavedModel
in weights/dejpeg, exactly as a user starts it. The browser is Debian's `chromium` package driven by
the `playwright` Python client through `executable_path` (no browser download). When the chromium
binary is missing the tests are skipped; `.ci/run` installs it, so CI always runs them.

Screenshots (desktop and phone) are written to `$ENHANCER_TEST_ARTIFACTS` when set, otherwise into
pytest's temporary directory; the path is printed (`pytest -s` or the `-rA` summary shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import httpx
import numpy as np
import pytest
from helpers import MODEL_DIR, REPO_ROOT, free_port

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY_TIMEOUT_S = 300  # model load + warm-up of every tile bucket on a busy 2-core CPU
RESULT_TIMEOUT_MS = 180_000


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHROMIUM = _find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it",
    ),
]


@contextmanager
def _running_server(tmp_path_factory, **extra_env):
    """The real service on a free port, with `extra_env` on top; yields its base URL once /readyz
    answers 200."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ)
    env.update(
        ENHANCER_MODEL_DIR=str(MODEL_DIR),
        ENHANCER_UPSCALE_MODEL_DIRS="none",  # only the model named above, also once weights/upscale-x* exist
        ENHANCER_HOST="127.0.0.1",
        ENHANCER_PORT=str(port),
        ENHANCER_LOG_LEVEL="warning",
        # Small tiles: warm-up covers 16 small shapes instead of 64 up to 512x512, so the server is
        # ready in seconds on a shared CPU; the 243x171 test photo then spans several tiles.
        ENHANCER_TILE_SIZE="128",
        ENHANCER_TILE_OVERLAP="32",
        ENHANCER_MAX_BATCH_SIZE="2",
        ENHANCER_INTRA_OP_THREADS="2",
        ENHANCER_INTER_OP_THREADS="1",
    )
    env.update(extra_env)
    cmd = [sys.executable, "-m", "enhancer.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real service without API keys; yields its base URL once /readyz answers 200.

    ENHANCER_TEST_SERVER_URL points the tests at a server that is already running instead.
    """
    if os.environ.get("ENHANCER_TEST_SERVER_URL"):
        yield os.environ["ENHANCER_TEST_SERVER_URL"].rstrip("/")
        return
    with _running_server(tmp_path_factory) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    configured = os.environ.get("ENHANCER_TEST_ARTIFACTS")
    path = Path(configured) / "web_page" if configured else tmp_path_factory.mktemp("web_page_artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nweb page screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, int, int]:
    """A small, visibly JPEG-damaged photo-like image with an odd size."""
    h, w = 171, 243
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.dstack([xx * 255 / w, yy * 255 / h, 255 - (xx + yy) * 255 / (w + h)]).astype(np.uint8)
    cv2.circle(img, (160, 80), 45, (40, 200, 250), -1)
    cv2.rectangle(img, (20, 105), (100, 160), (250, 250, 250), -1)
    cv2.putText(img, "enhancer", (18, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 20, 20), 2)
    path = tmp_path_factory.mktemp("inputs") / "holiday photo.jpg"
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 15])
    return path, w, h


# Records every value body[data-state] takes, so the test can check the progress states the page
# went through without racing against them.
RECORD_STATES = """
window.__states = [];
document.addEventListener('DOMContentLoaded', () => {
  window.__states.push(document.body.dataset.state);
  new MutationObserver((records) => {
    for (const r of records) window.__states.push(r.target.dataset.state);
  }).observe(document.body, {attributes: true, attributeFilter: ['data-state']});
});
"""


def _new_page(browser, base, **context_args):
    ctx = browser.new_context(accept_downloads=True, **context_args)
    page = ctx.new_page()
    page.add_init_script(RECORD_STATES)
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    return ctx, page, requests, errors


def _enhance(page, file: Path):
    page.set_input_files("#file-input", str(file))
    page.get_by_role("button", name="Enhance").click()


def _api_filename(base: str, file: Path, fmt: str) -> str:
    """The download name the API itself gives this upload (from its Content-Disposition)."""
    r = httpx.post(
        f"{base}/upscale", params={"format": fmt}, files={"image": (file.name, file.read_bytes())}, timeout=120
    )
    assert r.status_code == 200, r.text
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("inline; filename=")
    star = re.search(r"filename\*=UTF-8''([^;]+)", disposition)  # the full name, when it is not ASCII
    return unquote(star.group(1)) if star else re.search(r'filename="([^"]*)"', disposition).group(1)


def _only_own_origin(requests: list[str], base: str) -> None:
    foreign = [u for u in requests if not (u.startswith(base + "/") or u.startswith(("blob:", "data:")))]
    assert not foreign, f"page fetched from elsewhere: {foreign}"


def _box(page, selector: str) -> dict:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not shown"
    return box


def _overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def _labels_clear_of_the_image(page) -> None:
    """The "Original" and "Enhanced" labels are shown and cover no part of the image, edge included."""
    image = _box(page, "#viewport")  # the part of the image on screen is inside the viewport
    for tag in (".tag-before", ".tag-after"):
        assert not _overlap(_box(page, tag), image), tag


def _shot(locator) -> np.ndarray:
    """A screenshot of one element, as BGR pixels."""
    return cv2.imdecode(np.frombuffer(locator.screenshot(), np.uint8), cv2.IMREAD_COLOR)


def test_enhance_compare_zoom_download(server, browser, artifacts, photo):
    path, w, h = photo
    ctx, page, requests, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        assert "enhancer" in page.title()
        assert page.get_by_role("link", name="API docs").get_attribute("href") == "/docs"
        assert page.get_by_role("button", name="Enhance").is_disabled()

        # lossless PNG by default: no quality control; a lossy format shows it
        fmt = page.get_by_label("Output format")
        assert fmt.input_value() == "png"
        assert page.locator("#quality-field").is_hidden()
        fmt.select_option("webp")
        assert page.get_by_label("Quality").is_visible()
        fmt.select_option("png")

        _enhance(page, path)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        states = page.evaluate("window.__states")
        assert states.index("uploading") < states.index("working") < states.index("done"), states

        # the result is the server's image, at the input's exact size, shown next to the original
        sizes = page.evaluate(
            """() => ['img-after', 'img-before'].map(id => {
                 const i = document.getElementById(id);
                 return [i.naturalWidth, i.naturalHeight, i.complete, i.src.slice(0, 5)];
               })"""
        )
        assert sizes == [[w, h, True, "blob:"], [w, h, True, "blob:"]]
        assert page.locator("#result-summary").inner_text().startswith(f"{w} × {h} px · PNG")

        # download with the name from Content-Disposition (the server sanitises the stem, so it
        # differs from the page's own fallback "holiday photo_enhanced.png"); same-size PNG
        expected = _api_filename(server, path, "png")
        assert expected.endswith("_enhanced.png") and expected != "holiday photo_enhanced.png"
        link = page.get_by_role("link", name=f"Download {expected}")
        with page.expect_download() as dl_info:
            link.click()
        download = dl_info.value
        assert download.suggested_filename == expected
        saved = artifacts / download.suggested_filename
        download.save_as(saved)
        assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert cv2.imread(str(saved)).shape == (h, w, 3)

        page.screenshot(path=str(artifacts / "desktop-result.png"), full_page=True)
        _labels_clear_of_the_image(page)
        assert page.locator(".tag-after").inner_text() == "Enhanced"

        # before/after slider: keyboard moves it, the divider and the clip follow
        split = page.get_by_label("Before / after divider")
        assert split.input_value() == "50"
        divider_x0 = page.locator("#divider").bounding_box()["x"]
        clip0 = page.eval_on_selector("#img-after", "e => e.style.clipPath")
        split.focus()
        for _ in range(20):
            page.keyboard.press("ArrowLeft")
        assert split.input_value() == "30"
        assert split.get_attribute("aria-valuetext") == "30% original, 70% enhanced"
        divider_x1 = page.locator("#divider").bounding_box()["x"]
        clip1 = page.eval_on_selector("#img-after", "e => e.style.clipPath")
        assert divider_x1 < divider_x0 - 10
        assert clip1 != clip0 and clip1.startswith("inset(")

        # ... and so does dragging the handle on the image with the mouse
        box = page.locator(".divider-handle").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + 150, cy, steps=5)
        page.mouse.up()
        assert int(split.input_value()) > 30
        assert page.locator("#divider").bounding_box()["x"] > divider_x1 + 100

        # zoom: 400% shows real pixels (nearest-neighbour), at four times the image size
        page.get_by_role("button", name="400%").click()
        assert page.get_by_role("button", name="400%").get_attribute("aria-pressed") == "true"
        stage = page.locator("#stage").bounding_box()
        assert (round(stage["width"]), round(stage["height"])) == (4 * w, 4 * h)
        assert page.eval_on_selector("#img-after", "e => getComputedStyle(e).imageRendering") == "pixelated"
        _labels_clear_of_the_image(page)
        page.screenshot(path=str(artifacts / "desktop-zoom-400.png"), full_page=True)
        page.get_by_role("button", name="Fit").click()
        assert page.get_by_role("button", name="Fit").get_attribute("aria-pressed") == "true"
        assert page.locator("#stage").bounding_box()["width"] <= page.locator("#viewport").bounding_box()["width"]

        _only_own_origin(requests, server)
        assert not errors, errors
    finally:
        ctx.close()


def _shown_whole(page, selector: str) -> None:
    """The element's text is not cut: nothing overflows its box, and the box is on the screen."""
    cut = page.eval_on_selector(selector, "e => e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight")
    assert not cut, selector
    box = _box(page, selector)
    assert box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"], (selector, box)


def test_phone_viewport(server, browser, artifacts, photo, tmp_path):
    source, w, h = photo
    path = tmp_path / "chelsea_q10_from_the_holiday_trip_to_the_coast.jpg"  # long, as camera and chat apps name them
    path.write_bytes(source.read_bytes())
    ctx, page, requests, errors = _new_page(
        browser, server, viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
    )
    try:
        page.screenshot(path=str(artifacts / "phone-start.png"), full_page=True)
        page.get_by_label("Output format").select_option("jpeg")
        page.get_by_label("Quality").fill("80")
        page.set_input_files("#file-input", str(path))
        assert page.locator("#file-name").inner_text() == path.name
        _shown_whole(page, "#file-name")
        page.get_by_role("button", name="Enhance").click()
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        dims = page.eval_on_selector("#img-after", "e => [e.naturalWidth, e.naturalHeight]")
        assert dims == [w, h]
        name = _api_filename(server, path, "jpeg")
        assert page.locator("#download").get_attribute("download") == name
        assert page.locator("#download-name").inner_text() == name
        _shown_whole(page, "#download .btn-label")
        _labels_clear_of_the_image(page)

        # nothing sticks out sideways, and the controls are within the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        for selector in ("#download", "#compare", "#split", ".zoom:not(.enlarge-choice)"):
            box = page.locator(selector).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
        page.screenshot(path=str(artifacts / "phone-result.png"), full_page=True)
        _only_own_origin(requests, server)
        assert not errors, errors
    finally:
        ctx.close()


def test_non_image_shows_api_detail(server, browser, artifacts, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("shopping list: milk, eggs, bread\n")
    # what the API itself says about this file
    api = httpx.post(
        server + "/upscale", files={"image": (fake.name, fake.read_bytes(), "image/jpeg")}, timeout=60
    )
    assert api.status_code in (400, 415)
    detail = api.json()["detail"]
    assert isinstance(detail, str) and detail

    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        _enhance(page, fake)
        alert = page.get_by_role("alert")
        alert.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
        shown = page.locator("#error-message").inner_text()
        assert shown == detail[0].upper() + detail[1:]  # the API's words, as a sentence
        assert page.locator("#result").is_hidden()
        assert page.get_by_role("button", name="Enhance").is_enabled()  # the user can try again
        page.screenshot(path=str(artifacts / "desktop-error.png"), full_page=True)
        assert not errors, errors
    finally:
        ctx.close()


def test_a_good_jpeg_is_said_to_be_returned_unchanged(server, browser, photo, tmp_path):
    path, w, h = photo
    good = tmp_path / "good.jpg"
    assert cv2.imwrite(str(good), cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 97])
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        _enhance(page, good)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        summary = page.locator("#result-summary").inner_text()
        assert summary.startswith(f"{w} × {h} px · PNG")
        assert "already a good JPEG (quality 97): returned unchanged" in summary
        # not called enhanced: the model was not run
        assert page.locator(".tag-after").inner_text() == "Unchanged"
        assert page.get_by_text("Enhanced", exact=True).count() == 0
        # the download is the original file itself, and the page says why
        note = page.locator("#result-note")
        assert note.is_visible()
        assert "already a good JPEG (quality 97)" in note.inner_text() and "your original file" in note.inner_text()
        link = page.get_by_role("link", name="Download good.jpg")
        with page.expect_download() as dl_info:
            link.click()
        saved = tmp_path / "downloaded.jpg"
        dl_info.value.save_as(saved)
        assert dl_info.value.suggested_filename == "good.jpg"
        assert saved.read_bytes() == good.read_bytes()
        # the server's copy is still there for whoever wants the PNG
        copy = page.get_by_role("link", name="Download the PNG copy anyway")
        assert copy.get_attribute("download") == "good_enhanced.png"
        assert not errors, errors
    finally:
        ctx.close()

    # and a damaged one (the fixture photo, quality 15) carries no such note
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        _enhance(page, path)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        assert "returned unchanged" not in page.locator("#result-summary").inner_text()
        assert page.locator(".tag-after").inner_text() == "Enhanced"
        assert page.locator("#result-note").is_hidden()
        assert page.locator("#download").get_attribute("download") == _api_filename(server, path, "png")
    finally:
        ctx.close()


def test_a_jpeg_saved_again_from_a_coarser_one_is_said_to_be_returned_unchanged(server, browser, tmp_path):
    photo = cv2.imread(str(REPO_ROOT / "tests" / "data" / "held_out_photo.png"), cv2.IMREAD_COLOR)
    ok, earlier = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 50])
    resaved = tmp_path / "resaved.jpg"
    assert ok and cv2.imwrite(str(resaved), cv2.imdecode(earlier, cv2.IMREAD_COLOR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        _enhance(page, resaved)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        assert "saved again from a lower-quality JPEG: returned unchanged" in page.locator("#result-summary").inner_text()
        assert page.locator(".tag-after").inner_text() == "Unchanged"
        note = page.locator("#result-note").inner_text()
        assert "saved from an earlier, lower-quality JPEG" in note and "Strength Strong" in note and "your original file" in note
        assert page.get_by_role("link", name="Download resaved.jpg").count() == 1
        assert not errors, errors
    finally:
        ctx.close()


def test_network_failure_and_busy_messages(server, browser, photo):
    """Failures that a healthy test server never produces, injected at the browser's network layer."""
    path, _, _ = photo
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        page.route("**/upscale*", lambda route: route.abort("connectionrefused"))
        _enhance(page, path)
        page.get_by_role("alert").wait_for(state="visible")
        assert page.locator("#error-title").inner_text() == "Could not reach the server"
        assert "network" in page.locator("#error-message").inner_text()

        page.unroute("**/upscale*")
        page.route(
            "**/upscale*",
            lambda route: route.fulfill(
                status=503,
                headers={"Retry-After": "7", "Content-Type": "application/json"},
                body=json.dumps({"detail": "The server is at capacity."}),
            ),
        )
        page.get_by_role("button", name="Enhance").click()
        page.wait_for_function("document.getElementById('error-title').textContent === 'The server is busy'")
        assert page.locator("#error-message").inner_text() == "The server is at capacity. Try again in 7 s."
        assert not errors, errors
    finally:
        ctx.close()


# --- a server that requires an API key ----------------------------------------------------------

PAGE_KEY = "page-key-Vb7Nq2Zr5Ty8"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    with _running_server(tmp_path_factory, ENHANCER_API_KEYS=PAGE_KEY) as base:
        yield base


def test_no_key_prompt_when_the_server_needs_none(server, browser):
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        page.wait_for_selector("body[data-key-required='false']")
        assert page.locator("#key-form").is_hidden()
        assert page.get_by_role("button", name="Forget key").is_hidden()
        assert not errors, errors
    finally:
        ctx.close()


def test_key_prompt_keeps_the_key_for_the_tab_only(keyed_server, browser, artifacts, photo):
    path, w, h = photo
    ctx, page, requests, errors = _new_page(browser, keyed_server, viewport={"width": 1280, "height": 900})
    uploads = []
    page.on("request", lambda r: uploads.append(r) if "/upscale" in r.url else None)
    prompt = page.locator("#key-form")
    key_error = page.locator("#key-error")
    stored = "sessionStorage.getItem('enhancer.apiKey')"
    try:
        page.wait_for_selector("body[data-key-required='true']")
        assert page.get_by_role("heading", name="This server needs an API key").is_visible()
        page.screenshot(path=str(artifacts / "desktop-key-prompt.png"), full_page=True)

        # Enhance without a key sends nothing and asks for the key
        _enhance(page, path)
        assert key_error.inner_text() == "Enter the API key first, then press Enhance again."
        assert page.evaluate("document.activeElement.id") == "api-key"
        assert not uploads

        # a wrong key is refused by the server and not kept
        page.get_by_label("API key", exact=True).fill("not-the-key-0123456789")
        page.get_by_role("button", name="Use key").click()
        page.wait_for_function("document.getElementById('key-error').textContent.startsWith('This key was not accepted')")
        assert page.evaluate(stored) is None

        # the right key closes the prompt; it lives in this tab's sessionStorage and nowhere else
        page.get_by_label("API key", exact=True).fill(PAGE_KEY)
        page.get_by_role("button", name="Use key").click()
        prompt.wait_for(state="hidden")
        assert page.evaluate(stored) == PAGE_KEY
        assert PAGE_KEY not in page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
        assert PAGE_KEY not in page.evaluate("document.cookie")
        assert page.get_by_label("API key", exact=True).input_value() == ""

        # the upload carries it and succeeds
        page.get_by_role("button", name="Enhance").click()
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        assert page.eval_on_selector("#img-after", "e => [e.naturalWidth, e.naturalHeight]") == [w, h]
        assert [r.all_headers().get("authorization") for r in uploads] == [f"Bearer {PAGE_KEY}"]
        assert PAGE_KEY not in "".join(requests)  # never in a URL

        # a reload of the same tab keeps it; "Forget key" drops it
        page.reload()
        page.wait_for_selector("body[data-key-required='true']")
        assert prompt.is_hidden()
        page.get_by_role("button", name="Forget key").click()
        assert prompt.is_visible() and page.evaluate(stored) is None

        # a key withdrawn on the server since it was entered: the page asks again
        page.evaluate("sessionStorage.setItem('enhancer.apiKey', 'withdrawn-key-0123456789')")
        page.reload()
        page.wait_for_selector("body[data-key-required='true']")
        assert key_error.inner_text().startswith("The key used earlier in this tab is no longer accepted")
        assert page.evaluate(stored) is None
        _only_own_origin(requests, keyed_server)
        assert not errors, errors
    finally:
        ctx.close()

    # another browser session (a new tab or window of a fresh profile) starts without it
    ctx, page, _, _ = _new_page(browser, keyed_server, viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page.wait_for_selector("body[data-key-required='true']")
        assert page.locator("#key-form").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(artifacts / "phone-key-prompt.png"), full_page=True)
    finally:
        ctx.close()


def test_an_upload_answered_401_asks_for_the_key_again(keyed_server, browser, photo):
    """The key was accepted, then withdrawn on the server before the upload."""
    path, _, _ = photo
    ctx, page, _, errors = _new_page(browser, keyed_server, viewport={"width": 1280, "height": 900})
    try:
        page.wait_for_selector("body[data-key-required='true']")
        page.get_by_label("API key", exact=True).fill(PAGE_KEY)
        page.get_by_role("button", name="Use key").click()
        page.locator("#key-form").wait_for(state="hidden")
        page.route(
            "**/upscale*",
            lambda route: route.fulfill(
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="enhancer", error="invalid_token"', "Content-Type": "application/json"},
                body=json.dumps({"detail": "the API key in the Authorization header is not valid"}),
            ),
        )
        _enhance(page, path)
        page.locator("#error").wait_for(state="visible")
        assert page.locator("#error-title").inner_text() == "An API key is needed"
        assert page.locator("#key-form").is_visible()
        assert page.evaluate("sessionStorage.getItem('enhancer.apiKey')") is None
        assert not errors, errors
    finally:
        ctx.close()


def test_too_many_requests_says_when_to_retry(server, browser, photo):
    path, _, _ = photo
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        page.route(
            "**/upscale*",
            lambda route: route.fulfill(
                status=429,
                headers={"Retry-After": "12", "Content-Type": "application/json"},
                body=json.dumps({"detail": "this client already has 1 upload(s) in progress."}),
            ),
        )
        _enhance(page, path)
        page.wait_for_function("document.getElementById('error-title').textContent === 'Too many requests'")
        assert page.locator("#error-message").inner_text() == "This client already has 1 upload(s) in progress. Try again in 12 s."
        assert not errors, errors
    finally:
        ctx.close()


# --- transparency, strength, the API docs ------------------------------------------------------


def test_a_semi_transparent_image_is_compared_as_it_is(server, browser, artifacts, tmp_path):
    """Each side of the divider shows its own layer alone: the enhanced side looks exactly like the
    answer drawn by itself, not like the answer drawn over the original (more opaque than it is)."""
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    bgra = np.dstack([xx * 255 // w, yy * 255 // h, np.full((h, w), 200), np.full((h, w), 110)]).astype(np.uint8)
    path = tmp_path / "glass.png"
    assert cv2.imwrite(str(path), bgra)
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        _enhance(page, path)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        stage = page.locator("#stage")
        compared = _shot(stage)
        page.screenshot(path=str(artifacts / "desktop-transparent.png"), full_page=True)
        page.eval_on_selector("#img-before", "e => e.style.visibility = 'hidden'")
        answer_alone = _shot(stage)
        page.eval_on_selector("#img-before", "e => e.style.visibility = ''")
        page.eval_on_selector("#img-after", "e => e.style.visibility = 'hidden'")
        original_alone = _shot(stage)
        page.eval_on_selector("#img-after", "e => e.style.visibility = ''")

        sh, sw = compared.shape[:2]
        assert sw > 300  # far enough from the divider and its handle at the middle
        rows = slice(sh // 10, sh - sh // 10)
        left, right = slice(sw // 20, sw * 2 // 5), slice(sw * 3 // 5, sw - sw // 20)
        diff_right = np.abs(compared[rows, right].astype(int) - answer_alone[rows, right].astype(int)).max()
        diff_left = np.abs(compared[rows, left].astype(int) - original_alone[rows, left].astype(int)).max()
        assert diff_right <= 2, f"the enhanced side differs from the answer alone by {diff_right} levels"
        assert diff_left <= 2, f"the original side differs from the original alone by {diff_left} levels"
        # and the transparency is shown: behind the image lies the checkerboard
        checker = original_alone[rows, left].reshape(-1, 3).astype(int)
        assert np.ptp(checker.sum(axis=1)) > 10
        assert not errors, errors
    finally:
        ctx.close()


def test_the_checkerboard_is_only_behind_the_image(server, browser, tmp_path):
    """An opaque photo narrower than the comparison: the space beside it is plain, not a pattern
    that reads as transparency."""
    tall = tmp_path / "tall.png"
    assert cv2.imwrite(str(tall), np.full((240, 60, 3), (40, 120, 200), np.uint8))
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    try:
        _enhance(page, tall)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        viewport, stage = _box(page, "#viewport"), _box(page, "#stage")
        beside = int(stage["x"] - viewport["x"]) - 4
        assert beside > 40, (viewport, stage)  # the image is narrower than the comparison
        pixels = _shot(page.locator("#viewport"))
        empty = pixels[10:-10, 4:beside].reshape(-1, 3)
        assert (empty == empty[0]).all(), "the empty space beside the image has a pattern"
        assert "conic-gradient" in page.eval_on_selector("#stage", "e => getComputedStyle(e).backgroundImage")
        assert not errors, errors
    finally:
        ctx.close()


def test_strength_is_chosen_and_sent_as_a_query_parameter(server, browser, photo):
    path, _, _ = photo
    ctx, page, _, errors = _new_page(browser, server, viewport={"width": 1280, "height": 900})
    strength = page.get_by_label("Strength")
    hint = page.locator("#strength-hint")
    try:
        assert strength.input_value() == "auto"
        hints = {}
        for value in ("auto", "light", "strong", "off"):
            strength.select_option(value)
            hints[value] = hint.inner_text()
        assert len(set(hints.values())) == 4 and all(len(text) < 120 for text in hints.values()), hints
        assert page.eval_on_selector("#strength", "e => e.getAttribute('aria-describedby')") == "strength-hint"

        strength.select_option("auto")
        page.set_input_files("#file-input", str(path))
        with page.expect_request("**/upscale?*") as sent:
            page.get_by_role("button", name="Enhance").click()
        assert parse_qs(urlsplit(sent.value.url).query)["strength"] == ["auto"]
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        assert page.locator(".tag-after").inner_text() == "Enhanced"

        # off: the model is not run, and the page does not call the answer enhanced
        strength.select_option("off")
        with page.expect_request("**/upscale?*") as sent:
            page.get_by_role("button", name="Enhance").click()
        assert parse_qs(urlsplit(sent.value.url).query)["strength"] == ["off"]
        page.wait_for_selector("#result-note:not([hidden])", timeout=RESULT_TIMEOUT_MS)
        assert page.locator(".tag-after").inner_text() == "Unchanged"
        assert page.get_by_label("Before / after divider").get_attribute("aria-valuetext") == "50% original, 50% unchanged"
        assert "strength off: returned unchanged" in page.locator("#result-summary").inner_text()
        assert page.locator("#download").get_attribute("download") == _api_filename(server, path, "png")

        strength.select_option("strong")
        with page.expect_request("**/upscale?*") as sent:
            page.get_by_role("button", name="Enhance").click()
        assert parse_qs(urlsplit(sent.value.url).query)["strength"] == ["strong"]
        assert not errors, errors
    finally:
        ctx.close()


def test_the_api_docs_work_without_the_internet(server, browser, artifacts):
    """/docs and /redoc with every request to another origin refused, as on a machine offline."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    errors: list[str] = []

    def only_this_server(route):
        if route.request.url.startswith(server + "/"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    ctx.route("**/*", only_this_server)
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(server + "/docs")
        upscale = page.locator(".opblock-post", has_text="/upscale")
        upscale.wait_for(timeout=30_000)
        upscale.locator(".opblock-summary").click()
        page.get_by_role("button", name="Try it out").click()
        assert page.locator(".opblock-post input[type=file]").count() == 1  # the image to send
        assert page.locator(".opblock-post select").filter(has_text="strong").count() == 1  # strength
        assert page.get_by_role("button", name="Execute").is_visible()
        icon = page.eval_on_selector("link[rel~=icon]", "e => e.href")
        assert icon.startswith(server + "/") and httpx.get(icon).status_code == 200
        page.screenshot(path=str(artifacts / "docs-offline.png"), full_page=False)

        page.goto(server + "/redoc")
        page.get_by_text("Remove JPEG damage from an image").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "redoc-offline.png"), full_page=False)
        assert not refused, f"the docs asked another origin for {refused}"
        assert not errors, errors
    finally:
        ctx.close()


# --- enlarging (?scale=2): a server with an upscaling model --------------------------------------


@pytest.fixture(scope="module")
def upscaling_server(tmp_path_factory, upscaler_dirs):
    """The shipped restorer plus the 2x test upscaler (tests/upscalers.py); no 4x model."""
    with _running_server(
        tmp_path_factory, ENHANCER_UPSCALE_MODEL_DIRS=str(upscaler_dirs[2]), ENHANCER_TILE_OVERLAP="48"
    ) as base:
        yield base


def test_enlarging_2x_compares_the_original_enlarged_with_the_answer(upscaling_server, browser, artifacts, photo):
    path, w, h = photo
    base = upscaling_server
    ctx, page, requests, errors = _new_page(browser, base, viewport={"width": 1280, "height": 900})
    size = page.get_by_label("Size")
    try:
        # the sizes this server serves (from /readyz): 4x is offered disabled, with the reason
        page.wait_for_selector("body[data-scales='1,2']")
        assert size.input_value() == "1"
        options = page.eval_on_selector_all("#scale option", "os => os.map(o => [o.value, o.disabled, o.textContent])")
        assert options == [["1", False, "Same size"], ["2", False, "Enlarge 2×"], ["4", True, "Enlarge 4× (not on this server)"]]
        assert page.eval_on_selector("#scale", "e => e.getAttribute('aria-describedby')") == "scale-hint"

        size.select_option("2")
        assert "Twice the width and height" in page.locator("#scale-hint").inner_text()
        page.set_input_files("#file-input", str(path))
        with page.expect_request("**/upscale?*") as sent:
            page.get_by_role("button", name="Enhance").click()
        assert parse_qs(urlsplit(sent.value.url).query)["scale"] == ["2"]
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)

        # the answer at twice the size; the original as it is, stretched over the same area
        sizes = page.evaluate("() => ['img-after', 'img-before'].map(id => [document.getElementById(id).naturalWidth, document.getElementById(id).naturalHeight])")
        assert sizes == [[2 * w, 2 * h], [w, h]]
        page.get_by_role("button", name="100%").click()
        after_box, before_box = _box(page, "#img-after"), _box(page, "#img-before")
        assert (round(after_box["width"]), round(after_box["height"])) == (2 * w, 2 * h)
        assert before_box == after_box
        assert page.locator("#result-summary").inner_text().startswith(f"{2 * w} × {2 * h} px (2× {w} × {h}) · PNG")
        assert page.locator(".tag-after").inner_text() == "Enhanced 2×"
        _labels_clear_of_the_image(page)

        # the original enlarged smoothly by default, or as blocks (nearest), whatever the zoom
        choice = page.get_by_role("group", name="Original enlarged with")
        assert choice.is_visible()
        rendering = lambda sel: page.eval_on_selector(sel, "e => getComputedStyle(e).imageRendering")  # noqa: E731
        assert choice.get_by_role("button", name="Smooth").get_attribute("aria-pressed") == "true"
        assert page.locator(".tag-before").inner_text() == "Original 2×, smooth"
        assert rendering("#img-before") == "auto"
        page.get_by_role("button", name="400%").click()
        assert rendering("#img-after") == "pixelated" and rendering("#img-before") == "auto"
        page.get_by_label("Before / after divider").fill("100")  # the original alone
        smooth = _shot(page.locator("#viewport"))
        choice.get_by_role("button", name="Nearest").click()
        assert page.locator(".tag-before").inner_text() == "Original 2×, nearest"
        assert rendering("#img-before") == "pixelated"
        nearest = _shot(page.locator("#viewport"))
        page.screenshot(path=str(artifacts / "desktop-x2-nearest-400.png"), full_page=True)
        # at 400% of a 2x answer, each original pixel is an 8x8 block when nearest, not when smooth
        def flat_share(shot):  # the share of side-by-side screen pixels that are equal
            return float((np.diff(shot[40:-40:4, 40:-40].astype(int), axis=1) == 0).all(axis=-1).mean())

        assert flat_share(nearest) > 0.8 and flat_share(smooth) < flat_share(nearest) - 0.2, (flat_share(nearest), flat_share(smooth))

        # the download is the server's answer, named _x2
        api = httpx.post(f"{base}/upscale", params={"scale": 2}, files={"image": (path.name, path.read_bytes())}, timeout=120)
        name = re.search(r'filename="([^"]*)"', api.headers["content-disposition"]).group(1)
        assert name.endswith("_x2.png")
        assert page.locator("#download").get_attribute("download") == name
        with page.expect_download() as dl_info:
            page.get_by_role("link", name=f"Download {name}").click()
        saved = artifacts / dl_info.value.suggested_filename
        dl_info.value.save_as(saved)
        assert dl_info.value.suggested_filename == name
        assert cv2.imread(str(saved)).shape == (2 * h, 2 * w, 3)

        # strength off at 2x: enlarged, not restored, and not called unchanged
        page.get_by_label("Strength").select_option("off")
        page.get_by_role("button", name="Enhance").click()
        page.wait_for_function("document.getElementById('tag-after').textContent === 'Enlarged 2×'", timeout=RESULT_TIMEOUT_MS)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        assert "strength off: enlarged, not restored" in page.locator("#result-summary").inner_text()
        assert page.locator("#result-note").is_hidden()

        # back to the same size: no enlargement choice, and the zoom shows real pixels again
        page.get_by_label("Strength").select_option("auto")
        size.select_option("1")
        page.get_by_role("button", name="Enhance").click()
        page.wait_for_function("document.getElementById('tag-after').textContent === 'Enhanced'", timeout=RESULT_TIMEOUT_MS)
        page.wait_for_selector("body[data-state='done']", timeout=RESULT_TIMEOUT_MS)
        assert page.eval_on_selector("#img-after", "e => [e.naturalWidth, e.naturalHeight]") == [w, h]
        assert choice.is_hidden() and page.locator(".tag-before").inner_text() == "Original"
        page.get_by_role("button", name="400%").click()
        assert rendering("#img-before") == "pixelated"
        _only_own_origin(requests, base)
        assert not errors, errors
    finally:
        ctx.close()
