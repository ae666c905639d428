"""Every pydicom test file with pixel data: decoded, or refused with a 422 whose detail names the problem."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.data import get_testdata_file  # noqa: E402

from service.errors import XaasError  # noqa: E402
from service.imaging import decode_image  # noqa: E402

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _files_with_pixels() -> list[tuple[Path, object]]:
    found = []
    # the files shipped in the wheel (get_testdata_files would also try to download the optional external set)
    for name in sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*")):
        if not name.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(name, force=True)
        except Exception:  # noqa: BLE001 - not a DICOM file (pydicom also ships other test data)
            continue
        if any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            found.append((Path(name), ds))
    return found


def test_every_pixel_file_is_decoded_or_refused_with_a_422():
    files = _files_with_pixels()
    assert len(files) > 40
    decoded, refused = set(), {}
    for path, ds in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decode_image(path.read_bytes())
            decoded.add(str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else "")
        except XaasError as exc:
            refused[path.name] = exc
    for name, exc in refused.items():
        assert exc.status == 422, (name, exc.status, exc.detail)
    # every compressed family a maintained plugin decodes is decoded (pylibjpeg-libjpeg, -openjpeg, pyjpegls, RLE)
    from pydicom import uid

    for syntax in (uid.JPEGBaseline8Bit, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless,
                   uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless, uid.DeflatedExplicitVRLittleEndian):
        assert str(syntax) in decoded, syntax.name


def test_jpeg_lossy_is_a_422_naming_the_transfer_syntax_while_its_fixed_12_bit_twin_decodes():
    # JPEG-lossy.dcm is a non-conformant stream (invalid SOS parameters), not an unsupported variant:
    # JPGExtended.dcm, its fixed version with the same 12 bits stored, decodes through pylibjpeg-libjpeg.
    with pytest.raises(XaasError) as info:
        decode_image(Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes())
    assert info.value.status == 422 and "JPEG Extended" in info.value.detail
    fixed = Path(get_testdata_file("JPGExtended.dcm"))
    assert int(pydicom.dcmread(fixed, stop_before_pixels=True).BitsStored) == 12
    assert decode_image(fixed.read_bytes()).pixels.shape == (1024, 256, 1)
