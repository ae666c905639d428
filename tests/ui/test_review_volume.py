"""The review page's volume view in a real browser (Debian's headless Chromium, Playwright) against a live
``xaas serve`` with the shipped ``demo-3d`` model and a volume ``xaas demo-volume DIR --index 5`` writes (a rod, whose
3-D box leaves the first slices out: the coarse 6 x 8 x 8 Grad-CAM map boxes most of the other demo volumes whole).

Opened as a DICOM series (several files in one pick) and as NIfTI: the *Slice* control and the viewer's PageUp /
PageDown scroll the axial slices of the display grid; the heatmap is the raw map of ONE ``/explain`` call resampled
trilinearly in the browser (equal, level for level, to the service's own resampling of the same raw map) and
scrolling sends no request; the canvas changes with the slice; the 3-D box of ``/localize`` is drawn on a slice it
crosses and not on one outside it; windows work on the volume; the DICOM results of a series download (multi-frame
PM and SEG) and are hidden for NIfTI; a 2-D model for a volume and a 3-D model for a 2-D image show the service's
422 detail in the page's alert. No console errors beyond the browser's own log line of those refused requests.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench._server import running_server
from service.config import DEFAULT_MODELS_FILE
from service.demo.volume_model import VOLUME_CLASSES, volume_sample
from service.demo.volumes import dicom_series, nifti_file
from service.imaging.volume import decode_volume, volume_to_model_input
from service.rendering_volume import map_on_grid
from tests.support import decode_raw, demo_png
from tests.ui.browser_support import browser_skip_reason

if browser_skip_reason():
    pytest.skip(browser_skip_reason(), allow_module_level=True)
from playwright import sync_api  # imported only once it is known to be installed

from tests.ui.test_review_page import TIMEOUT_MS, Console, changed, pixel_near, shot, snap

DISPLAY = (75, 32, 32)   # the display grid of a 24 x 32 x 32 volume of 2.5 x 0.8 x 0.8 mm: 0.8 mm cubes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shipped demo and demo-3d, and demo-3d with keep_aspect (its input padded around the volume)."""
    demo = Path(DEFAULT_MODELS_FILE).parent
    registry = tmp_path_factory.mktemp("models") / "models.yaml"
    registry.write_text(f"""models:
  - name: demo
    source: python:service.demo.model:create_demo_model
    weights: {demo / "demo" / "demo_cnn.safetensors"}
    labels: [circle, square, triangle, cross, ring, star]
    task: multilabel
    input_size: [128, 128]
    mean: [0.497, 0.497, 0.499]
    std: [0.232, 0.240, 0.231]
    channels: 3
    default: true
""" + "".join(f"""  - name: {name}
    source: python:service.demo.volume_model:create_demo_volume_model
    weights: {demo / "demo" / "demo_vol.safetensors"}
    labels: [sphere, cube, rod]
    spatial_dims: 3
    input_size: [24, 32, 32]
    channels: 1
    window: [200, 800]
    mean: [0.3]
    std: [0.3]
    target_layer: features
    keep_aspect: {str(aspect).lower()}
""" for name, aspect in (("demo-3d", False), ("demo-3d-aspect", True))))
    with running_server(models=registry, env={"XAAS_DEVICE": "cpu", "XAAS_API_KEYS": "",
                                              "XAAS_CORS_ORIGINS": ""}) as srv:
        yield srv


@pytest.fixture(scope="module")
def volume():
    voxels, mask, label = volume_sample(1, 5)   # `xaas demo-volume DIR --index 5`
    return {"series": dicom_series(voxels), "nifti": nifti_file(voxels), "label": VOLUME_CLASSES[label],
            "range": (float(voxels.min()), float(voxels.max()))}


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.console = Console(pg)
    pg.goto(server.url + "/ui")
    pg.wait_for_function("() => document.querySelectorAll('#model-select option').length > 0")
    yield pg
    context.close()


def pick_model(page, name: str) -> None:
    page.get_by_label("Model", exact=True).select_option(name)


def open_series(page, files: list[bytes]) -> None:
    page.get_by_label("Image", exact=True).set_input_files(
        [{"name": f"slice{k:03d}.dcm", "mimeType": "application/dicom", "buffer": f} for k, f in enumerate(files)])


def wait_classes(page) -> None:
    page.get_by_role("list", name="Classes").get_by_role("listitem").first.get_by_role("checkbox").wait_for()


def explain(page, method: str = "gradcam") -> None:
    page.get_by_label("Method", exact=True).select_option(method)
    page.get_by_role("button", name="Explain").click()
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Explained')")


def current_slice(page) -> int:
    return page.evaluate("() => window.xaasReview.state.slice")


def expected_levels(raw: dict) -> np.ndarray:
    """The service's map resampling (torch, trilinear, half-voxel centres) of the raw map onto the display grid,
    as 8-bit levels with 255 = its maximum."""
    grid = F.interpolate(torch.from_numpy(decode_raw(raw).copy())[None, None], size=DISPLAY, mode="trilinear",
                         align_corners=False)[0, 0].numpy()
    return np.rint(np.clip(grid / grid.max(), 0, 1) * 255)


def magenta(pixels) -> bool:
    return any(r > 200 and g < 80 and b > 200 for r, g, b in pixels)


def test_a_dicom_series_scrolls_its_slices_heatmap_and_box_without_requests(page, server, volume):
    pick_model(page, "demo-3d")
    open_series(page, volume["series"])
    page.get_by_label("Slice", exact=True).wait_for(state="visible")
    wait_classes(page)
    info = page.locator("#image-info").inner_text()
    assert "24 files" in info and "32 × 32 × 24" in info and "32 × 32 × 75" in info
    assert page.locator("#slice-count").inner_text() == f"{DISPLAY[0] // 2 + 1} of {DISPLAY[0]}"
    predicted = page.evaluate("() => window.xaasReview.state.predictions")
    assert predicted[0]["label"] == volume["label"]

    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    explain(page)
    explains = [u for u in urls if "/explain/" in u]
    assert len(explains) == 1   # one request for the whole volume's map

    # the page's heatmap volume equals the service's resampling of the raw map, level for level (rounding aside)
    files = [("image", (f"{k}.dcm", f, "application/dicom")) for k, f in enumerate(volume["series"])]
    explained = httpx.post(server.url + "/explain/gradcam", files=files,
                           data={"model": "demo-3d", "target": volume["label"], "outputs": "raw"}).json()
    raw = explained["explanations"][0]["raw"]
    shown = np.asarray(page.evaluate("""() => Array.from(
        window.xaasReview.state.results.get('gradcam').maps.values().next().value.levels)"""), float)
    assert np.abs(shown - expected_levels(raw).ravel()).max() <= 1

    box = httpx.post(server.url + "/localize", files=files,
                     data={"model": "demo-3d", "target": volume["label"]}).json()["boxes"][0]
    x0, y0, z0, x1, y1, z1 = box["box3d"]
    crossed = [k for k in range(DISPLAY[0]) if z0 <= (k + 0.5) * 24 / DISPLAY[0] < z1]
    outside = [k for k in range(DISPLAY[0]) if k not in crossed]
    assert crossed and outside

    urls.clear()
    page.get_by_label("Show image").uncheck()   # the heatmap alone on the canvas
    page.get_by_label("Opacity", exact=True).fill("100")
    slider = page.get_by_label("Slice", exact=True)
    slider.fill(str(crossed[len(crossed) // 2] + 1))
    inside = snap(page)
    assert current_slice(page) == crossed[len(crossed) // 2]
    # the box's left edge, half-way down, on a slice it crosses (display px = source voxels x 32 / 32)
    x, y = page.evaluate("([x, y]) => window.xaasReview.viewports[0].imageToScreen(x, y)", [x0, (y0 + y1) / 2])
    assert magenta(pixel_near(page, x, y)), "the 3-D box is drawn on a slice it crosses"
    assert "box" in page.locator("#caption-1").inner_text()
    shot(page, "10-volume-series-box")
    slider.fill(str(outside[0] + 1))
    assert not magenta(pixel_near(page, x, y)), "and not on a slice outside it"
    assert changed(page, inside, snap(page)) > 0.05   # another slice of the heatmap
    # keyboard: the range control's own arrows, the viewer's PageDown / PageUp / End / Home
    slider.focus()
    page.keyboard.press("ArrowRight")
    assert current_slice(page) == outside[0] + 1
    canvas = page.locator("#canvas-1")
    canvas.focus()
    before = snap(page)
    page.keyboard.press("PageDown")
    assert current_slice(page) == outside[0] + 2 and slider.input_value() == str(outside[0] + 3)
    page.keyboard.press("PageUp")
    page.keyboard.press("End")
    assert current_slice(page) == DISPLAY[0] - 1
    page.keyboard.press("Home")
    assert current_slice(page) == 0
    page.keyboard.press("PageUp")   # stays at the first slice
    assert current_slice(page) == 0
    slider.fill(str(crossed[len(crossed) // 2] + 1))
    assert changed(page, before, snap(page)) > 0.05
    assert urls == []   # scrolling, opacity and layers cost no request

    # windows on the volume: a preset changes the image, dragging with the Window tool makes it custom
    page.get_by_label("Show image").check()
    page.get_by_label("Opacity", exact=True).fill("40")   # at 100 % the heatmap hides the image
    plain = snap(page)
    low, high = volume["range"]
    page.get_by_label("Preset").select_option(label=f"Full range ({(low + high) / 2:g} / {high - low:g})")
    assert changed(page, plain, snap(page)) > 0.05
    page.get_by_label("Window", exact=True).check()
    bounds = canvas.bounding_box()
    page.mouse.move(bounds["x"] + 200, bounds["y"] + 200)
    page.mouse.down()
    page.mouse.move(bounds["x"] + 320, bounds["y"] + 200, steps=4)
    page.mouse.up()
    assert page.get_by_label("Preset").input_value() == "custom"
    assert float(page.get_by_label("Width").input_value()) > high - low
    page.get_by_label("Pan", exact=True).check()
    slider.fill("1")   # the custom window stays while scrolling
    assert page.get_by_label("Preset").input_value() == "custom"
    assert urls == []
    shot(page, "11-volume-series-windowed")

    # the DICOM results of a series: its multi-frame Parametric Map and SEG (no SC or SR for volumes)
    saved = []
    page.on("download", lambda d: saved.append(d))
    page.get_by_role("button", name="Download DICOM results").click()
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Saved')")
    for _ in range(50):
        if len(saved) == 2:
            break
        page.wait_for_timeout(100)
    assert sorted(d.suggested_filename.rsplit("-", 1)[1] for d in saved) == ["pm.dcm", "seg.dcm"]
    import pydicom

    pm = pydicom.dcmread(saved[0].path() if "pm" in saved[0].suggested_filename else saved[1].path())
    assert int(pm.NumberOfFrames) == 24   # one frame per source slice
    page.console.check()


def test_a_nifti_volume_and_the_2d_3d_mismatch_alerts(page, server, volume):
    pick_model(page, "demo-3d")
    page.get_by_label("Image", exact=True).set_input_files(
        {"name": "volume.nii.gz", "mimeType": "application/gzip", "buffer": volume["nifti"]})
    page.get_by_label("Slice", exact=True).wait_for(state="visible")
    wait_classes(page)
    assert "nifti" in page.locator("#image-info").inner_text()
    explain(page)
    page.get_by_label("Slice", exact=True).fill("20")
    a = snap(page)
    page.locator("#canvas-1").focus()
    for _ in range(10):
        page.keyboard.press("PageDown")
    assert current_slice(page) == 29 and changed(page, a, snap(page)) > 0.05
    assert page.get_by_role("button", name="Download DICOM results").is_hidden()   # not built from NIfTI
    assert page.get_by_role("alert").is_hidden()

    pick_model(page, "demo")   # a 2-D model for the volume: the service's 422, in the alert
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible")
    assert "(422)" in alert.inner_text() and "takes 2-D images" in alert.inner_text()
    sync_api.expect(page.get_by_role("button", name="Explain")).to_be_disabled(timeout=15_000)
    shot(page, "12-volume-2d-model")

    pick_model(page, "demo-3d")
    page.locator("#image-input").set_input_files(
        {"name": "shapes.png", "mimeType": "image/png", "buffer": demo_png(3)})
    page.wait_for_function("() => document.getElementById('message').textContent.includes('not a volume')")
    assert "(422)" in alert.inner_text() and page.get_by_label("Slice", exact=True).is_hidden()
    sync_api.expect(page.get_by_role("button", name="Explain")).to_be_disabled(timeout=15_000)
    page.console.check("status of 422")   # the browser logs the refused requests itself; nothing else may fail


def test_a_keep_aspect_model_s_map_is_cut_back_to_the_volume_before_it_is_shown(page, server, volume):
    """keep_aspect: the 60 x 25.6 x 25.6 mm volume fills 24 x 10 x 10 voxels of the [24, 32, 32] input, the rest is
    padding; the page cuts the raw map back to that box as the service does (map_on_grid with the content box)."""
    pick_model(page, "demo-3d-aspect")
    page.locator("#image-input").set_input_files(
        {"name": "volume.nii.gz", "mimeType": "application/gzip", "buffer": volume["nifti"]})
    page.get_by_label("Slice", exact=True).wait_for(state="visible")
    wait_classes(page)
    explain(page)
    key = page.evaluate("() => window.xaasReview.state.selected[0]")
    body = httpx.post(server.url + "/explain/gradcam", files={"image": ("v.nii.gz", volume["nifti"])},
                      data={"model": "demo-3d-aspect", "target": str(key), "outputs": "raw"}).json()
    decoded = decode_volume(volume["nifti"])
    volume_to_model_input(decoded, input_size=(24, 32, 32), channels=1, mean=[0.3], std=[0.3], window=(200, 800),
                          keep_aspect=True)
    assert decoded.content == ((0, 24, 24), (11, 21, 32), (11, 21, 32))
    grid = map_on_grid(decode_raw(body["explanations"][0]["raw"]), DISPLAY, decoded.content)
    expected = np.rint(np.clip(grid / grid.max(), 0, 1) * 255).ravel()
    shown = np.asarray(page.evaluate("""() => Array.from(
        window.xaasReview.state.results.get('gradcam').maps.values().next().value.levels)"""), float)
    assert np.abs(shown - expected).max() <= 1
    # the same map without the cut (stretched over the padding too) would be far off: the test can tell
    stretched = F.interpolate(torch.from_numpy(decode_raw(body["explanations"][0]["raw"]).copy())[None, None],
                              size=DISPLAY, mode="trilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(shown - np.rint(np.clip(stretched / stretched.max(), 0, 1) * 255).ravel()).max() > 20
    page.console.check()


def test_the_file_control_takes_several_files_and_a_folder(page):
    assert page.evaluate("() => document.getElementById('image-input').multiple")
    assert page.get_by_label("DICOM folder").get_attribute("webkitdirectory") is not None
