"""Client: explain_dicomweb sends the PACS reference and returns the stored UIDs and the results as Datasets."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest

pydicom = pytest.importorskip("pydicom")

from xaas_client import Client  # noqa: E402


def test_explain_dicomweb_round_trips_through_the_client():
    from pydicom.data import get_testdata_file

    part10 = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    seen = {}

    def pacs_service(request: httpx.Request) -> httpx.Response:
        seen["path"], seen["body"] = request.url.path, json.loads(request.content)
        body = {"model": "demo", "method": "gradcam", "layer": None, "image": {"width": 128, "height": 128},
                "explanations": [{"dicom": {"pm": base64.b64encode(part10).decode()}}], "stored": ["1.2.3"]}
        return httpx.Response(200, json=body)

    with Client("http://xaas.test", transport=httpx.MockTransport(pacs_service)) as client:
        result = client.explain_dicomweb("gradcam", "1.2", "1.2.3", "1.2.3.4", store=True, top_k=1)
    assert seen["path"] == "/dicomweb/explain/gradcam"
    assert seen["body"] == {"study": "1.2", "series": "1.2.3", "instance": "1.2.3.4", "store": True,
                            "outputs": ["dicom-pm"], "top_k": 1}
    assert result.stored == ["1.2.3"]
    dataset = result.datasets()[0]["pm"]
    assert dataset.SOPInstanceUID == pydicom.dcmread(io.BytesIO(part10)).SOPInstanceUID


def test_localize_dicomweb_sends_its_method_and_asks_for_the_report():
    seen = {}

    def pacs_service(request: httpx.Request) -> httpx.Response:
        seen["path"], seen["body"] = request.url.path, json.loads(request.content)
        return httpx.Response(200, json={"model": "demo", "method": "saliency", "boxes": [], "stored": []})

    with Client("http://xaas.test", transport=httpx.MockTransport(pacs_service)) as client:
        result = client.localize_dicomweb("1.2", "1.2.3", "1.2.3.4", method="saliency", threshold=0.2)
    assert seen["path"] == "/dicomweb/localize"
    assert seen["body"] == {"study": "1.2", "series": "1.2.3", "instance": "1.2.3.4", "store": False,
                            "outputs": ["dicom-sr"], "method": "saliency", "threshold": 0.2}
    assert result.stored == [] and result.dicom == [{}]
