"""The review page in a real browser: Debian's headless Chromium driven by Playwright against a live ``xaas serve``.

What a user does, end to end: open the page (keyless, then with an API key), open a demo PNG and a pydicom CT, read
the classes and scores, tick targets, pick a method, see the overlay drawn (canvas pixels change with the opacity
slider, with no request), see the boxes drawn where ``/localize`` put them, window the CT, compare two methods side
by side with synchronised pan/zoom, and see the service's problem detail for a broken file; no console errors
anywhere. Screenshots of the main states go to ``build/ui-screenshots/``.

Skipped (with the reason) only where Playwright or a Chromium binary is missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from bench._server import running_server
from tests.support import demo_png
from tests.ui.browser_support import SHOTS, browser_skip_reason

if browser_skip_reason():
    pytest.skip(browser_skip_reason(), allow_module_level=True)

TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def server():
    env = {"XAAS_DEVICE": "cpu", "XAAS_API_KEYS": "", "XAAS_CORS_ORIGINS": ""}
    with running_server(env=env) as srv:
        yield srv


class Console:
    """Console errors and uncaught exceptions of a page; ``allowed`` are substrings of expected network errors."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def check(self, *allowed: str) -> None:
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not unexpected, unexpected


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.console = Console(pg)
    pg.goto(server.url + "/")  # the root redirects to /ui
    pg.wait_for_function("() => document.querySelectorAll('#model-select option').length > 0")
    yield pg
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def snap(page, canvas: str = "canvas-1") -> int:
    """Keep a copy of the canvas's pixels in the page (copying megabytes to Python is slow); returns its handle."""
    return page.evaluate("""(id) => { const c = document.getElementById(id);
        window.__snaps = window.__snaps || [];
        return window.__snaps.push(c.getContext('2d').getImageData(0, 0, c.width, c.height).data) - 1; }""", canvas)


def changed(page, a: int, b: int) -> float:
    """Fraction of the RGBA bytes that differ between two snapshots."""
    return page.evaluate("""([a, b]) => { const x = window.__snaps[a], y = window.__snaps[b];
        if (x.length !== y.length) return 1; let n = 0; for (let i = 0; i < x.length; i++) n += x[i] !== y[i];
        return n / x.length; }""", [a, b])


def pixel_near(page, x: float, y: float, radius: int = 2, canvas: str = "canvas-1") -> list[list[int]]:
    """RGBA of the canvas pixels within ``radius`` device pixels of the CSS point (x, y)."""
    return page.evaluate("""([id, x, y, r]) => { const c = document.getElementById(id); const d = devicePixelRatio;
        const px = c.getContext('2d').getImageData(Math.round(x * d) - r, Math.round(y * d) - r, 2 * r + 1, 2 * r + 1)
          .data; const out = []; for (let i = 0; i < px.length; i += 4) out.push([px[i], px[i+1], px[i+2]]);
        return out; }""", [canvas, x, y, radius])


def open_file(page, name: str, data: bytes, mime: str) -> None:
    page.get_by_label("Image", exact=True).set_input_files({"name": name, "mimeType": mime, "buffer": data})


def classes(page):
    return page.get_by_role("list", name="Classes").get_by_role("listitem")


def explain(page, method: str) -> None:
    page.get_by_label("Method", exact=True).select_option(method)
    page.get_by_role("button", name="Explain").click()
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Explained')")


def test_a_demo_png_is_scored_explained_overlaid_and_boxed(page, server):
    assert page.url.endswith("/ui")
    for label in ("Image", "Model", "Method", "Opacity"):
        assert page.get_by_label(label, exact=True).is_visible(), label
    assert page.get_by_label("Model", exact=True).input_value() == "demo"
    png = demo_png(11)
    open_file(page, "shapes.png", png, "image/png")
    items = classes(page)
    items.first.get_by_role("checkbox").wait_for()
    predicted = httpx.post(server.url + "/predict", files={"image": ("a.png", png)}, data={"top_k": "6"}).json()
    assert items.count() == len(predicted["predictions"])
    first = predicted["predictions"][0]
    assert first["label"] in items.first.inner_text() and f"{first['score']:.3f}" in items.first.inner_text()
    assert items.first.get_by_role("checkbox").is_checked()
    second = predicted["predictions"][1]
    items.nth(1).get_by_role("checkbox").check()  # a second target: one request explains both
    shot(page, "01-png-opened")

    explain(page, "gradcam")
    assert page.locator("#method-sanity").is_hidden()
    # the overlay is drawn: pixels change with the opacity, without any request
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.get_by_label("Opacity", exact=True).fill("0")
    plain = snap(page)
    page.get_by_label("Opacity", exact=True).fill("80")
    strong = snap(page)
    assert changed(page, plain, strong) > 0.1
    assert requests == []
    page.get_by_label("Colour map").select_option("inferno")
    assert changed(page, strong, snap(page)) > 0.1 and requests == []

    # boxes drawn where /localize put them (magenta outline on the box's left edge)
    boxes = httpx.post(server.url + "/localize", files={"image": ("a.png", png)},
                       data={"method": "gradcam", "target": [str(first["index"]), str(second["index"])]}).json()
    box = next(b for b in boxes["boxes"] if b["index"] == first["index"])
    x, y = page.evaluate("([x, y]) => window.xaasReview.viewports[0].imageToScreen(x, y)",
                         [box["box"][0], (box["box"][1] + box["box"][3]) / 2])
    near = pixel_near(page, x, y)
    assert any(r > 200 and g < 80 and b > 200 for r, g, b in near), near
    caption = page.locator("#caption-1").inner_text()
    assert "gradcam" in caption and first["label"] in caption and "box" in caption
    shot(page, "02-png-overlay-boxes")

    page.get_by_label("Show boxes").uncheck()  # layer toggle
    assert not any(r > 200 and g < 80 and b > 200 for r, g, b in pixel_near(page, x, y))
    page.get_by_label("Show boxes").check()

    page.get_by_label("Shown class").select_option(str(second["index"]))  # the second target's map, no request
    assert second["label"] in page.locator("#caption-1").inner_text() and requests == []

    with page.expect_download() as download:
        page.get_by_role("button", name="Download overlay PNG").click()
    path = download.value.path()
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.console.check()


def test_a_ct_is_windowed_explained_and_its_dicom_results_downloaded(page, server):
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    open_file(page, "CT_small.dcm", ct, "application/dicom")
    page.locator("#window-controls").wait_for(state="visible")
    assert "DICOM 128 × 128" in page.locator("#image-info").inner_text()
    classes(page).first.get_by_role("checkbox").wait_for()
    before = snap(page)
    page.get_by_label("Preset").select_option(label="Soft tissue (40 / 400)")
    assert page.get_by_label("Width").input_value() == "400"
    assert changed(page, before, snap(page)) > 0.05
    # drag with the Window tool: wider window, fewer saturated pixels
    page.get_by_label("Window", exact=True).check()
    canvas = page.locator("#canvas-1")
    bounds = canvas.bounding_box()
    page.mouse.move(bounds["x"] + 200, bounds["y"] + 200)
    page.mouse.down()
    page.mouse.move(bounds["x"] + 320, bounds["y"] + 200, steps=4)
    page.mouse.up()
    assert float(page.get_by_label("Width").input_value()) > 400
    assert page.get_by_label("Preset").input_value() == "custom"
    page.get_by_label("Pan", exact=True).check()

    explain(page, "saliency")
    sanity = page.locator("#method-sanity")
    assert sanity.is_visible() and "Sanity check" in sanity.inner_text()  # /methods' warning, shown
    page.get_by_label("Opacity", exact=True).fill("0")
    plain = snap(page)
    page.get_by_label("Opacity", exact=True).fill("100")
    assert changed(page, plain, snap(page)) > 0.05
    shot(page, "03-ct-windowed-overlay")

    dicom = page.get_by_role("button", name="Download DICOM results")
    assert dicom.is_enabled()
    saved = []
    page.on("download", lambda d: saved.append(d.suggested_filename))
    dicom.click()
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Saved')")
    for _ in range(50):  # the last download event may trail the status line
        if len(saved) == 4:
            break
        page.wait_for_timeout(100)
    kinds = sorted(name.rsplit("-", 1)[1] for name in saved)
    assert kinds == ["pm.dcm", "sc.dcm", "seg.dcm", "sr.dcm"], saved
    page.console.check()


def test_two_methods_side_by_side_with_synchronised_pan_and_zoom(page, server):
    open_file(page, "shapes.png", demo_png(12), "image/png")
    classes(page).first.get_by_role("checkbox").wait_for()
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.get_by_label("Side by side").select_option("method")
    page.get_by_label("Second method").select_option("occlusion")  # a slow method: runs as an async job
    explain(page, "gradcam")
    assert page.locator("#viewport-2").is_visible()
    assert "occlusion" in page.locator("#caption-2").inner_text()
    assert changed(page, snap(page, "canvas-1"), snap(page, "canvas-2")) > 0.05  # two different maps
    assert any("/jobs/" in u for u in urls)  # explanations run as async jobs, polled for progress
    view = "() => [window.xaasReview.view.scale, window.xaasReview.view.tx, window.xaasReview.view.ty]"
    start = page.evaluate(view)
    page.locator("#canvas-1").focus()
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    moved = page.evaluate(view)
    assert moved[0] > start[0] and moved != start
    # one shared view: the same image point sits at the same place in both canvases
    a = page.evaluate("() => window.xaasReview.viewports[0].imageToScreen(10, 20)")
    b = page.evaluate("() => window.xaasReview.viewports[1].imageToScreen(10, 20)")
    assert a == b
    shot(page, "04-side-by-side")

    # two classes side by side: the second ticked class in the second viewer, from the same request
    second = classes(page).nth(1)
    second.get_by_role("checkbox").check()
    explain(page, "gradcam")
    page.get_by_label("Side by side").select_option("class")
    label = second.locator("span").first.inner_text()
    assert label in page.locator("#caption-2").inner_text()
    assert label not in page.locator("#caption-1").inner_text()
    page.get_by_role("button", name="Fit").click()
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: one column, nothing wider than the screen
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.get_by_label("Opacity", exact=True).is_visible() or page.get_by_label("Opacity").count() == 1
    shot(page, "05-narrow")
    page.console.check()


def test_a_broken_file_shows_the_services_problem_detail(page, server):
    open_file(page, "broken.png", b"\x89PNG\r\n\x1a\n this is not really a PNG" * 4, "image/png")
    message = page.get_by_role("alert")
    message.wait_for(state="visible")
    text = message.inner_text()
    assert "(422)" in text and "not a recognised image format" in text  # the problem's status and detail
    assert page.get_by_role("button", name="Explain").is_disabled()
    shot(page, "06-broken-file")
    page.console.check("status of 422")  # the browser logs the failed request itself; nothing else may fail


def test_with_api_keys_the_page_loads_and_asks_for_the_key(browser):
    with running_server(env={"XAAS_DEVICE": "cpu", "XAAS_API_KEYS": "k-123"}) as srv:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        console = Console(page)
        seen: list[dict] = []
        page.on("request", lambda r: seen.append(r.headers))
        page.goto(srv.url + "/ui")
        alert = page.get_by_role("alert")
        alert.wait_for(state="visible")
        assert "401" in alert.inner_text() and "API key" in alert.inner_text()
        page.get_by_label("API key").fill("k-123")
        page.get_by_role("button", name="Use key").click()
        page.wait_for_function("() => document.querySelectorAll('#model-select option').length > 0")
        assert alert.is_hidden()
        assert any(h.get("authorization") == "Bearer k-123" for h in seen)
        assert page.evaluate("() => document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") \
            == "{}{}"  # kept in memory only
        context.close()
        console.check("status of 401")


def test_a_multi_frame_dicom_is_read_frame_by_frame(page, server):
    dose = Path(get_testdata_file("rtdose.dcm")).read_bytes()  # 15 grey frames
    open_file(page, "rtdose.dcm", dose, "application/dicom")
    frame = page.get_by_label("Frame", exact=True)
    frame.wait_for(state="visible")
    assert page.locator("#frame-count").inner_text() == "of 15"
    classes(page).first.get_by_role("checkbox").wait_for()
    first = snap(page)
    frame.fill("8")
    frame.press("Enter")
    page.wait_for_function("() => window.xaasReview.state.frame === 7 && window.xaasReview.state.predictions.length")
    # another frame on screen: its pixels arrive by their own request, which may finish after the predictions
    deadline = time.monotonic() + 15
    while changed(page, first, snap(page)) <= 0.01 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert changed(page, first, snap(page)) > 0.01
    # the classes are those of frame 7 (0-based): the page sends `frame` with its calls (frame 0's predictions may
    # still be on screen until frame 7's /predict answers, so poll for them)
    expected = httpx.post(server.url + "/predict", files={"image": ("d.dcm", dose)},
                          data={"frame": "7", "top_k": "6"}).json()["predictions"]
    want = [(p["index"], round(p["score"], 5)) for p in expected]

    def shown() -> list:
        return [(p["index"], round(p["score"], 5)) for p in page.evaluate("() => window.xaasReview.state.predictions")]

    deadline = time.monotonic() + 15
    while shown() != want and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert shown() == want
    page.console.check()


def test_every_control_is_labelled_and_reachable_by_keyboard(page):
    unlabelled = page.evaluate("""() => Array.from(document.querySelectorAll('input, select, button, canvas'))
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map((el) => el.id || el.outerHTML.slice(0, 60))""")
    assert unlabelled == []
    assert page.get_by_role("list", name="Classes").is_visible()
    # Tab walks from the key field through the controls to the viewer (no trap, no unreachable control)
    reached = set()
    page.get_by_label("API key").focus()
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("() => document.activeElement.id"))
    assert {"image-input", "model-select", "method-select", "opacity", "colormap", "canvas-1"} <= reached


def test_a_slow_method_shows_its_progress_and_can_be_cancelled(page, server):
    open_file(page, "shapes.png", demo_png(13), "image/png")
    classes(page).first.get_by_role("checkbox").wait_for()
    deletes: list[str] = []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    page.get_by_label("Method", exact=True).select_option("rise")
    page.get_by_label("masks", exact=True).fill("20000")  # its parameter form, from /methods
    page.get_by_role("button", name="Explain").click()
    page.locator("#progress-row").wait_for(state="visible")
    page.wait_for_function("() => document.getElementById('progress').value > 0")  # the job's own count
    assert "masks" in page.locator("#progress-text").inner_text()
    shot(page, "08-progress")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function("() => document.getElementById('status').textContent === 'Cancelled.'")
    assert page.locator("#progress-row").is_hidden()
    assert len(deletes) == 1 and "/jobs/" in deletes[0]
    assert httpx.get(deletes[0]).status_code == 404  # the job is gone on the server too
    page.console.check()
