"""Tests for service.imaging.dicom, on pydicom's bundled test files: LUT pipeline, frames, limits, patient data."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pydicom
import pytest
from imaging_support import (
    CT_PATIENT_NAME,
    dataset_to_bytes,
    dicom_bytes,
    dicom_dataset,
    expected_linear_window,
    expected_minmax,
)

from service.errors import InvalidImage, InvalidOption, PayloadTooLarge, XaasError
from service.imaging import ImageLimits, decode_image

# --------------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------------


def test_dicom_ct_small_modality_lut_and_minmax_fallback() -> None:
    ds = dicom_dataset("CT_small.dcm")
    assert "WindowCenter" not in ds  # so the min-max fallback is what is tested here
    decoded = decode_image(dicom_bytes("CT_small.dcm"))
    assert (decoded.format, decoded.width, decoded.height, decoded.frames) == ("DICOM", 128, 128, 1)
    assert decoded.pixels.shape == (128, 128, 1)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected_minmax(hu), atol=1e-6)


@pytest.mark.parametrize(("center", "width"), [(40.0, 400.0), (300.0, 1000.0)])
def test_dicom_ct_small_window_matches_numpy(center: float, width: float) -> None:
    ds = dicom_dataset("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = center, width
    decoded = decode_image(dataset_to_bytes(ds))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = expected_linear_window(hu, center, width)
    assert 0.0 < expected.mean() < 1.0  # the window really cuts into the data
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-5)


def test_dicom_mr_small_uses_its_own_window() -> None:
    ds = dicom_dataset("MR_small.dcm")
    decoded = decode_image(dicom_bytes("MR_small.dcm"))
    expected = expected_linear_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-5)


def test_dicom_monochrome1_is_inverted() -> None:
    ds = dicom_dataset("CT_small.dcm")
    mono2 = decode_image(dataset_to_bytes(ds)).pixels
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = decode_image(dataset_to_bytes(ds)).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert not np.allclose(mono1, mono2)


def test_dicom_without_preamble() -> None:
    data = dicom_bytes("CT_small.dcm")
    with_preamble = decode_image(data)
    without = decode_image(data[132:])  # drop the 128-byte preamble and the DICM magic
    assert without.format == "DICOM"
    np.testing.assert_array_equal(without.pixels, with_preamble.pixels)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm"])
def test_dicom_compressed_grey(name: str) -> None:
    decoded = decode_image(dicom_bytes(name))
    assert decoded.pixels.shape == (1024, 256, 1)
    reference = decode_image(dicom_bytes("JPEG2000.dcm")).pixels[:, :, 0]
    assert decoded.pixels.min() == 0.0 and decoded.pixels.max() == 1.0
    assert np.corrcoef(decoded.pixels[:, :, 0].ravel(), reference.ravel())[0, 1] > 0.9


def test_dicom_jpeg_lossy_nonconformant_stream_is_a_clean_422() -> None:
    # JPEG-lossy.dcm has invalid SOS parameters; pylibjpeg and Pillow both refuse it (pydicom's test-file README
    # lists JPGExtended.dcm, used above, as its fixed version). It must be a clean 422 naming the transfer syntax.
    with pytest.raises(InvalidImage) as info:
        decode_image(dicom_bytes("JPEG-lossy.dcm"))
    assert info.value.detail == (
        "DICOM pixel data in JPEG Extended (Process 2 and 4) is corrupt and could not be decoded"
    )


def test_dicom_rgb_multiframe_rle() -> None:
    data = dicom_bytes("SC_rgb_rle_2frame.dcm")
    first = decode_image(data)
    assert (first.frames, first.pixels.shape) == (2, (100, 100, 3))
    np.testing.assert_allclose(first.pixels[0, 50], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(first.pixels[20, 50], [0.0, 1.0, 0.0], atol=1e-6)
    second = decode_image(data, frame=1)  # the second frame is the colour inverse of the first
    np.testing.assert_allclose(second.pixels[0, 50], [0.0, 1.0, 1.0], atol=1e-6)


def test_dicom_ybr_is_converted_to_rgb() -> None:
    uncompressed = decode_image(dicom_bytes("SC_ybr_full_422_uncompressed.dcm"))
    np.testing.assert_allclose(uncompressed.pixels[0, 0], [1.0, 0.0, 0.0], atol=0.01)  # red, not Y/Cb/Cr
    jpeg = decode_image(dicom_bytes("examples_ybr_color.dcm"), frame=5)  # JPEG baseline via pylibjpeg
    assert (jpeg.frames, jpeg.pixels.shape) == (30, (240, 320, 3))
    ds = dicom_dataset("examples_ybr_color.dcm")
    reference = pydicom.pixels.pixel_array(ds, index=5).astype(np.float32) / 255.0
    np.testing.assert_allclose(jpeg.pixels, reference, atol=1e-6)


def test_dicom_palette_colour() -> None:
    decoded = decode_image(dicom_bytes("examples_palette.dcm"))
    assert decoded.pixels.shape == (350, 800, 3)
    ds = dicom_dataset("examples_palette.dcm")
    reference = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    scale = 255.0 if reference.dtype == np.uint8 else 65535.0
    np.testing.assert_allclose(decoded.pixels, reference / scale, atol=1e-6)


def test_dicom_multiframe_frame_selection() -> None:
    ds = dicom_dataset("rtdose.dcm")
    data = dicom_bytes("rtdose.dcm")
    decoded = decode_image(data, frame=3)
    assert (decoded.frames, decoded.pixels.shape) == (15, (10, 10, 1))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected_minmax(ds.pixel_array[3]), atol=1e-6)
    assert not np.allclose(decode_image(data).pixels, decoded.pixels)  # default is frame 0, a different one
    with pytest.raises(InvalidOption) as info:
        decode_image(data, frame=15)
    assert info.value.status == 422
    assert "15 frames" in info.value.detail


def test_dicom_frame_limit_is_checked_before_decoding() -> None:
    truncated = dicom_bytes("rtdose.dcm")[:-3000]  # decoding would fail with 422
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(truncated, ImageLimits(max_frames=10))
    assert info.value.detail == "DICOM file has 15 frames, above the limit of 10"
    with pytest.raises(InvalidImage):
        decode_image(truncated)


def test_dicom_pixel_limit_is_checked_before_decoding() -> None:
    truncated = dicom_bytes("CT_small.dcm")[:-5000]
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(truncated, ImageLimits(max_pixels=128 * 128 - 1))
    assert "128×128" in info.value.detail


def test_dicom_without_pixel_data() -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(dicom_bytes("rtplan.dcm"))
    assert info.value.status == 422
    assert "no pixel data" in info.value.detail


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_truncated_dicom(name: str) -> None:
    data = dicom_bytes(name)
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.detail == "DICOM pixel data is truncated"


def test_dicom_errors_and_logs_never_contain_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    ct = dicom_dataset("CT_small.dcm")
    assert str(ct.PatientName) == CT_PATIENT_NAME
    secrets = [CT_PATIENT_NAME, "CompressedSamples", str(ct.PatientID)]
    failing: list[tuple[bytes, dict[str, object]]] = [
        (dicom_bytes("CT_small.dcm")[:20_000], {}),
        (dicom_bytes("CT_small.dcm"), {"frame": 1}),
        (dicom_bytes("CT_small.dcm"), {"limits": ImageLimits(max_pixels=10)}),
        (dicom_bytes("CT_small.dcm")[:700], {}),
        (dicom_bytes("JPEG-lossy.dcm"), {}),
        (dicom_bytes("rtplan.dcm"), {}),
    ]
    plan = dicom_dataset("rtplan.dcm")
    secrets += [str(plan.PatientName), str(plan.PatientID)]
    secrets = [secret for secret in secrets if len(secret) >= 4]
    assert len(secrets) >= 4
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data, kwargs in failing:
            with pytest.raises(XaasError) as info:
                decode_image(data, **kwargs)  # type: ignore[arg-type]
            texts = [info.value.detail, str(info.value), repr(info.value.__cause__), repr(info.value.__context__)]
            for secret in secrets:
                assert all(secret not in text for text in texts), (secret, texts)
    for secret in secrets:
        assert secret not in caplog.text
        assert all(secret not in str(w.message) for w in caught)


def test_dicom_voi_lut_sequence_is_preferred_over_window() -> None:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    ds = dicom_dataset("MR_small.dcm")  # has a window too; a VOI LUT takes precedence (as in pydicom)
    item = Dataset()
    item.add(DataElement(0x00283002, "US", [256, 0, 8]))  # LUTDescriptor: 256 entries, first maps 0, 8 bits
    item.add(DataElement(0x00283006, "US", list(range(255, -1, -1))))  # LUTData: an inverting ramp
    ds.VOILUTSequence = [item]
    decoded = decode_image(dataset_to_bytes(ds))
    stored = ds.pixel_array.astype(np.int64)
    assert stored.max() > 255  # values beyond the LUT map to its last entry
    expected = (255 - np.clip(stored, 0, 255)) / 255.0
    assert 0.0 < expected.mean() < 1.0
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-6)


def test_dicom_enhanced_functional_groups_rescale_and_window() -> None:
    from pydicom.dataset import Dataset

    ds = dicom_dataset("CT_small.dcm")
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    del ds.RescaleSlope, ds.RescaleIntercept
    transform, shared_window, frame_window = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
    shared_window.WindowCenter, shared_window.WindowWidth = 1000.0, 10.0
    frame_window.WindowCenter, frame_window.WindowWidth = 40.0, 400.0  # per-frame overrides shared
    shared, per_frame = Dataset(), Dataset()
    shared.PixelValueTransformationSequence = [transform]
    shared.FrameVOILUTSequence = [shared_window]
    per_frame.FrameVOILUTSequence = [frame_window]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [per_frame]
    decoded = decode_image(dataset_to_bytes(ds))
    expected = expected_linear_window(ds.pixel_array * slope + intercept, 40.0, 400.0)
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-5)


def test_invalid_window_falls_back_to_minmax() -> None:
    ds = dicom_dataset("MR_small.dcm")
    ds.WindowWidth = 0  # not allowed for LINEAR
    decoded = decode_image(dataset_to_bytes(ds))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected_minmax(ds.pixel_array), atol=1e-6)
