"""``POST /audit``: a zip of a labelled set → 202 + Location; the job counts images, its result is the report (the
biased demo model flagged, boxless too, the shipped one not), its HTML at ``/jobs/{id}/report.html``; DELETE makes it
gone; 429 past ``XAAS_MAX_JOBS``; every bad archive, label file or option is a problem+json 4xx before any job; a set
with object masks (in a subfolder of the zip) is measured on them, and every bad mask is a 4xx naming its file."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path

import pytest

from service.demo.data import BIAS_CLASS, generate_dataset
from tests.support import make_client, wait_ready

DEMO = Path(__file__).resolve().parents[2] / "service" / "demo"
LIMITS = {"audit_max_members": 40, "audit_max_images": 30, "audit_max_inflated_bytes": 2 * 1024 * 1024}


@pytest.fixture(scope="module")
def biased_set(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("audit-api"), 16, seed=5150, bias=True)


def _zip(folder: Path, *, labels: object | None = None, extra: dict[str, bytes] | None = None, prefix: str = "",
         compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for p in sorted(folder.iterdir()):
            if p.name == "labels.json" and labels is not None:
                z.writestr(prefix + "labels.json", labels if isinstance(labels, str) else json.dumps(labels))
            else:
                z.write(p, prefix + p.name)
        for name, blob in (extra or {}).items():
            z.writestr(name, blob)
    return buf.getvalue()


@pytest.fixture(scope="module")
def aclient(tmp_path_factory):
    registry = tmp_path_factory.mktemp("registry") / "models.yaml"
    common = ("source: python:service.demo.model:create_demo_model\n    labels: [circle, square, triangle, cross, "
              "ring, star]\n    task: multilabel\n    input_size: [128, 128]\n    mean: [0.497, 0.497, 0.499]\n"
              "    std: [0.232, 0.240, 0.231]\n    channels: 3\n    device: cpu\n")
    registry.write_text(f"models:\n  - name: demo\n    weights: {DEMO / 'demo_cnn.safetensors'}\n    default: true\n"
                        f"    {common}  - name: demo-bias\n    weights: {DEMO / 'demo_cnn_bias.safetensors'}\n"
                        f"    {common}")
    with make_client(models=str(registry), max_jobs=2, **LIMITS) as c:
        wait_ready(c)
        yield c


def _wait(client, job_id, timeout=120.0, seen=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/jobs/{job_id}").json()
        if seen is not None:
            seen.append(doc)
        if doc["status"] not in ("queued", "running"):
            return doc
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish")


def _audit(client, archive: bytes, **options) -> dict:
    r = client.post("/audit", files={"archive": ("set.zip", archive, "application/zip")},
                    data={k: str(v) for k, v in options.items()})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    seen: list[dict] = []
    doc = _wait(client, r.json()["id"], seen=seen)
    assert doc["status"] == "done", doc
    assert doc["kind"] == "audit" and doc["progress"]["unit"] == "images"
    assert doc["progress"]["done"] == doc["progress"]["total"] == doc["result"]["images"]
    return doc


@pytest.mark.skipif(not (DEMO / "demo_cnn_bias.safetensors").exists(), reason="the biased demo weights are not built")
@pytest.mark.parametrize("boxless", [False, True])
def test_the_biased_model_is_flagged_and_the_shipped_one_not(aclient, biased_set, boxless):
    archive = _zip(biased_set, prefix="biased/")            # the zip of a folder works as well as of its contents
    biased = _audit(aclient, archive, model="demo-bias", boxless=str(boxless).lower())
    report = biased["result"]
    assert report["mode"] == ("boxless" if boxless else "boxes") and report["flagged"] == [BIAS_CLASS], report
    assert "fixed-place" in report["classes"][BIAS_CLASS]["flags"]
    assert "_html" not in report and report["report_html"] == f"/jobs/{biased['id']}/report.html"
    page = aclient.get(report["report_html"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!doctype html>") and "fixed-place" in page.text
    assert page.text.count("data:image/png;base64,") > len(report["classes"])    # mean maps + flagged examples
    clean = _audit(aclient, archive, model="demo", boxless=str(boxless).lower())["result"]
    assert clean["flagged"] == [] and clean["images"] == 16


def test_json_body_limit_and_progress_count_images(aclient, biased_set):
    r = aclient.post("/audit", json={"archive": base64.b64encode(_zip(biased_set)).decode(), "limit": 5,
                                     "method": "layercam", "examples": 1})
    assert r.status_code == 202, r.text
    doc = _wait(aclient, r.json()["id"])
    assert doc["status"] == "done" and doc["method"] == "layercam" and doc["result"]["images"] == 5
    assert doc["progress"]["total"] == 5


def test_delete_makes_an_audit_gone_and_its_report_too(aclient, biased_set):
    r = aclient.post("/audit", files={"archive": ("set.zip", _zip(biased_set), "application/zip")})
    job_id = r.json()["id"]
    assert aclient.delete(f"/jobs/{job_id}").status_code == 204
    assert aclient.get(f"/jobs/{job_id}").status_code == 404
    assert aclient.get(f"/jobs/{job_id}/report.html").status_code == 404
    time.sleep(0.2)
    assert not aclient.app.state.runtime.jobs.store.active()


def test_report_of_an_unfinished_or_other_job_and_admission(aclient, biased_set, demo_sample):
    from service.jobs import Job

    rise = [aclient.post("/explain/rise", files={"image": ("s.png", demo_sample[0], "image/png")},
                         data={"masks": "20000"}, headers={"Prefer": "respond-async"}).json()["id"] for _ in range(2)]
    page = aclient.get(f"/jobs/{rise[0]}/report.html")
    assert page.status_code == 404 and "not an audit" in page.json()["detail"]
    more = aclient.post("/audit", files={"archive": ("set.zip", _zip(biased_set), "application/zip")})
    assert more.status_code == 429 and int(more.headers["retry-after"]) >= 1         # XAAS_MAX_JOBS = 2
    for j in rise:
        assert aclient.delete(f"/jobs/{j}").status_code == 204
    store = aclient.app.state.runtime.jobs.store
    store.add(Job("unfinished-audit", "audit", "demo", status="running"), max_active=10)
    early = aclient.get("/jobs/unfinished-audit/report.html")
    assert early.status_code == 409 and early.headers["content-type"].startswith("application/problem+json")
    assert "running" in early.json()["detail"]
    store.delete("unfinished-audit")


def _labels(folder: Path) -> dict:
    return json.loads((folder / "labels.json").read_text())


def _bad_cases(folder: Path) -> list[tuple[str, bytes, dict, int, str]]:
    labels = _labels(folder)
    unknown = {**labels, "classes": [*labels["classes"], "dumbbell"]}
    missing = {**labels, "images": [*labels["images"], {"file": "nope.png", "objects": []}]}
    bomb = _zip(folder, extra={"padding.bin": b"\0" * (3 * 1024 * 1024)})
    many = _zip(folder, extra={f"x{i}.txt": b"x" for i in range(30)})
    big = {**labels, "images": labels["images"] * 2}
    return [
        ("not a zip", b"PK\x03\x04 this is no zip", {}, 422, "zip"),
        ("no labels", _zip_without_labels(folder), {}, 422, "labels.json"),
        ("labels not JSON", _zip(folder, labels="{broken"), {}, 422, "JSON"),
        ("labels malformed", _zip(folder, labels={"classes": "star"}), {}, 422, "classes"),
        ("unknown class", _zip(folder, labels=unknown), {}, 422, "dumbbell"),
        ("missing image", _zip(folder, labels=missing), {}, 422, "nope.png"),
        ("bomb", bomb, {}, 413, "inflates"),
        ("too many members", many, {}, 413, "files"),
        ("too many images", _zip(folder, labels=big), {}, 413, "images"),
        ("unknown model", _zip(folder), {"model": "nope"}, 404, "nope"),
        ("unknown method", _zip(folder), {"method": "nope"}, 404, "nope"),
        ("bad layer", _zip(folder), {"layer": "no.layer"}, 422, "no.layer"),
        ("unknown option", _zip(folder), {"colour": "red"}, 400, "colour"),
        ("bad boxless", _zip(folder), {"boxless": "maybe"}, 422, "boxless"),
    ]


def _zip_without_labels(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.glob("*.png")):
            z.write(p, p.name)
    return buf.getvalue()


def test_bad_requests_are_problems_before_any_job(aclient, biased_set):
    runtime = aclient.app.state.runtime
    for name, archive, options, status, fragment in _bad_cases(biased_set):
        r = aclient.post("/audit", files={"archive": ("set.zip", archive, "application/zip")}, data=options)
        assert r.status_code == status, (name, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), name
        assert fragment in r.json()["detail"], (name, r.json())
        assert not runtime.jobs.store.active(), name
    assert aclient.post("/audit", files={"model": (None, "demo")}).status_code == 400     # no archive field
    assert aclient.post("/audit", content=b"zip", headers={"content-type": "application/zip"}).status_code == 415
    assert aclient.post("/audit", json={"archive": "%%%"}).status_code == 400


def test_audit_work_explains_one_image_per_step(biased_set):
    """The job's step is one image's pairs (the live-traffic rule: requests wait for at most one image)."""
    from service.audit import AuditData, AuditRun
    from service.calibrate import load_model, load_pairs, parse_method
    from service.handlers.audit import AuditWork

    lm = load_model(None, "demo")
    inputs, sizes, pairs, files = load_pairs(biased_set, lm, limit=4, need_boxes=False)
    work = AuditWork(AuditRun(lm, parse_method("gradcam"), AuditData(inputs, sizes, pairs, files, bytes, "x")))
    per_image = [sum(p.image == i for p in pairs) for i in range(4)]
    counts = []
    while True:
        before = len(work.run.raw)
        done = work.advance()
        counts.append(len(work.run.raw) - before)
        assert work.progress.done == len(counts) and work.progress.total == 4
        if done:
            break
    assert counts == per_image


@pytest.fixture(scope="module")
def masked_set(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("audit-api-masks"), 6, seed=5150, masks=True)


def _zip_tree(folder: Path, *, labels: dict | None = None, extra: dict[str, bytes] | None = None,
              prefix: str = "") -> bytes:
    """The folder with its subfolders (the masks), labels.json replaced by ``labels`` when given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                if rel == "labels.json" and labels is not None:
                    z.writestr(prefix + rel, json.dumps(labels))
                else:
                    z.write(p, prefix + rel)
        for name, blob in (extra or {}).items():
            z.writestr(prefix + name, blob)
    return buf.getvalue()


def test_an_audit_with_masks_measures_them(aclient, masked_set):
    doc = _audit(aclient, _zip_tree(masked_set, prefix="set/"), model="demo")
    masked = doc["result"]
    assert masked["mode"] == "boxes" and masked["images"] == 6
    assert {c["located_by"] for c in masked["classes"].values()} == {"mask"}
    labels = _labels(masked_set)
    for item in labels["images"]:
        for o in item["objects"]:
            del o["mask"]
    boxed = _audit(aclient, _zip(masked_set, labels=labels), model="demo")["result"]
    for label, c in masked["classes"].items():
        b = boxed["classes"][label]
        assert b["located_by"] == "box" and c["object_area"] < b["object_area"]      # a mask within its tight box
        assert c["in_object"] <= b["in_object"] + 1e-9


def test_bad_masks_are_problems_naming_the_file(aclient, masked_set):
    from PIL import Image

    def relabel(**change) -> dict:
        labels = _labels(masked_set)
        labels["images"][1]["objects"][0].update(change)
        return labels

    small = io.BytesIO()
    Image.new("L", (64, 64), 255).save(small, format="PNG")
    cases = [
        ("missing", _zip_tree(masked_set, labels=relabel(mask="masks/nope.png")), 422, "masks/nope.png"),
        ("escape", _zip_tree(masked_set, labels=relabel(mask="../00000.png")), 422, "../00000.png"),
        ("absolute", _zip_tree(masked_set, labels=relabel(mask="/masks/00000_0.png")), 422, "/masks/00000_0.png"),
        ("not a string", _zip_tree(masked_set, labels=relabel(mask=["m.png"])), 422, "mask must be a file path"),
        ("wrong size", _zip_tree(masked_set, labels=relabel(mask="small.png"), extra={"small.png": small.getvalue()}),
         422, "small.png"),
        ("undecodable", _zip_tree(masked_set, labels=relabel(mask="masks/x.png"), extra={"masks/x.png": b"no png"}),
         422, "masks/x.png"),
        ("mask members count", _zip_tree(masked_set, extra={"masks/pad.bin": b"\0" * (3 * 1024 * 1024)}), 413,
         "inflates"),
    ]
    runtime = aclient.app.state.runtime
    for case, archive, status, fragment in cases:
        r = aclient.post("/audit", files={"archive": ("set.zip", archive, "application/zip")})
        assert r.status_code == status, (case, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), case
        detail = r.json()["detail"]
        assert fragment in detail, (case, detail)
        if case in ("missing", "wrong size", "undecodable"):
            assert "00001.png" in detail, (case, detail)
        assert not runtime.jobs.store.active(), case


def test_read_archive_keeps_subfolders_under_the_labels_folder():
    from service.handlers.audit import read_archive

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("set/labels.json", "set/a.png", "set/masks/a_0.png", "set/.git/x", "set/masks/.DS_Store",
                     "__MACOSX/set/a.png", "other/b.png", "set/../c.png"):
            z.writestr(name, name.encode())
    files = read_archive(buf.getvalue(), max_members=20, max_bytes=10_000)
    assert sorted(files) == ["a.png", "labels.json", "masks/a_0.png"] and files["masks/a_0.png"] == b"set/masks/a_0.png"
