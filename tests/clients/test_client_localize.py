"""``/localize`` through the client; skipped cleanly while the server has no such route."""

from __future__ import annotations

import asyncio

import pytest

from xaas_client import AsyncClient, Client, InvalidInput, LocalizeResponse

pytestmark = pytest.mark.usefixtures("localize_available")


def _check_boxes(result: LocalizeResponse) -> None:
    for box in result.boxes:
        x0, y0, x1, y1 = box.box
        assert isinstance(box.box, tuple) and all(isinstance(v, int) for v in box.box)
        assert 0 <= x0 < x1 <= result.image.width and 0 <= y0 < y1 <= result.image.height
        assert box.width == x1 - x0 and box.height == y1 - y0


def test_localize_defaults_and_options(server: str, sample_path):
    with Client(server, retries=0) as xaas:
        default = xaas.localize(sample_path)
        # the demo entry's calibrated defaults
        assert default.method == "guided-gradcam" and default.threshold == pytest.approx(0.05)
        assert default.image.size == (128, 128)
        _check_boxes(default)
        chosen = xaas.localize(sample_path, method="gradcam-pp", threshold=0.3, all_components=True, min_area=4,
                               target=["circle", 5])
        assert chosen.method == "gradcam-pp" and chosen.threshold == pytest.approx(0.3)
        assert {b.index for b in chosen.boxes} <= {0, 5}
        _check_boxes(chosen)
        with pytest.raises(InvalidInput):
            xaas.localize(sample_path, threshold=2.0)


def test_localize_async(server: str, sample_image):
    async def main() -> LocalizeResponse:
        async with AsyncClient(server, retries=0) as xaas:
            return await xaas.localize(sample_image[0], top_k=2)

    result = asyncio.run(main())
    assert result.model == "demo"
    _check_boxes(result)
