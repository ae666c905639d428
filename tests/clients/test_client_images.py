"""Image inputs → multipart file parts, and decoding of returned maps (no server needed)."""

from __future__ import annotations

import base64
import io
import sys

import numpy as np
import pytest
from PIL import Image

from xaas_client import Explanation, encode_image


def _decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_paths_bytes_and_files_are_sent_untouched(tmp_path, sample_png):
    path = tmp_path / "x.png"
    path.write_bytes(sample_png)
    assert encode_image(str(path)) == ("x.png", sample_png, "image/png")
    assert encode_image(path).content == sample_png
    assert encode_image(bytearray(sample_png)).content == sample_png
    assert encode_image(memoryview(sample_png)).content == sample_png
    with path.open("rb") as fh:
        assert encode_image(fh)[:2] == ("x.png", sample_png)
    assert encode_image(io.BytesIO(sample_png)).content == sample_png


def test_arrays_and_pil_images_become_pngs():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert (_decode(encode_image(rgb).content) == rgb).all()
    assert (_decode(encode_image(Image.fromarray(rgb)).content) == rgb).all()
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    assert (_decode(encode_image(grey[:, :, None]).content) == grey).all()
    floats = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    assert (_decode(encode_image(floats).content) == np.round(floats * 255).astype(np.uint8)).all()
    assert _decode(encode_image(np.ones((3, 3), bool)).content).max() == 255
    assert _decode(encode_image(np.full((3, 3), 4000, np.uint16)).content).max() == 4000


@pytest.mark.parametrize(("image", "error"), [
    (np.full((3, 3), 2.0), ValueError),              # float outside [0, 1]
    (np.zeros((3, 3, 2), np.uint8), ValueError),     # two channels
    (np.zeros((3, 3), np.int64), ValueError),
    (io.StringIO("text"), TypeError),                # text-mode file
    (12, TypeError),
])
def test_bad_inputs_say_what_is_wrong(image, error):
    with pytest.raises(error):
        encode_image(image)


def _explanation(values: np.ndarray) -> Explanation:
    heat = io.BytesIO()
    Image.fromarray((values / values.max() * 255).astype(np.uint8)).save(heat, format="PNG")
    raw = {"dtype": "float32", "shape": list(values.shape),
           "data": base64.b64encode(values.astype("<f4").tobytes()).decode()}
    return Explanation.model_validate({"index": 0, "label": "a", "score": 0.5,
                                       "heatmap": base64.b64encode(heat.getvalue()).decode(), "raw": raw,
                                       "empty": False, "nonfinite": False, "min": 0.0, "max": float(values.max())})


def test_explanation_decoders():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    exp = _explanation(values)
    raw = exp.raw_array()
    assert raw.dtype == np.float32 and raw.dtype.isnative and raw.flags.writeable and (raw == values).all()
    assert exp.heatmap_array().shape == (3, 4) and exp.heatmap_array().dtype == np.uint8
    assert exp.heatmap_image().mode == "L" and exp.heatmap_png().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="overlay"):
        exp.overlay_image()


def test_missing_extra_is_named_in_the_import_error(monkeypatch):
    exp = _explanation(np.ones((2, 2), np.float32))
    monkeypatch.setitem(sys.modules, "numpy", None)  # makes `import numpy` fail
    with pytest.raises(ImportError, match=r"xaas-client\[images\]"):
        exp.raw_array()
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r"\[images\]"):
        exp.heatmap_image()
    assert exp.heatmap_png().startswith(b"\x89PNG")  # raw bytes never need the extra
