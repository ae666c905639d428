"""``/display``: an uploaded image decoded for a viewer. Browsers cannot read DICOM, so the review page asks the
service, which already decodes every format the models accept, for the pixels it shows. Grey DICOM comes back as
Modality-LUT values plus the file's windows, so window centre/width can be dragged in the browser with no request
per step; everything else comes back as the 8-bit pixels the model is fed."""

from __future__ import annotations

import base64

import numpy as np

from ..api.schemas import DisplayResponse, DisplayWindow, ImageInfo, RawMap
from ..errors import InvalidImage, InvalidOption, PayloadTooLarge, UnsupportedMediaType
from ..imaging import ImageLimits, decode_image, rgb8
from ..imaging.dicom import dicom_grey_display, has_dicom_magic, read_dicom, read_dicom_without_preamble
from ..imaging.pil import open_pil
from ..imaging.volume import VolumeLimits, decode_volume, display_grid, is_volume_container, resample_volume
from ..rendering import encode_png
from ..runtime import Runtime

__all__ = ["display"]


async def display(runtime: Runtime, data: bytes, frame: int | None, volume: bool = False) -> DisplayResponse:
    if is_volume_container(data) or (volume and frame is None):
        return await runtime.in_thread(_display_volume, data, runtime.volume_limits)
    return await runtime.in_thread(_display, data, runtime.limits, frame)


def _display_volume(data: bytes, limits: VolumeLimits) -> DisplayResponse:
    try:
        vol = decode_volume(data, limits)
        size = display_grid(vol.voxels.shape, vol.spacing)
        values = resample_volume(vol.voxels, size)
    except MemoryError:
        raise PayloadTooLarge("the volume needs more memory to decode than is available") from None
    low, high = float(vol.voxels.min()), float(vol.voxels.max())
    extent = [n * s for n, s in zip(vol.voxels.shape, vol.spacing)]
    windows = [DisplayWindow(center=vol.window[0], width=vol.window[1])] if vol.window else []
    return DisplayResponse(
        format=vol.format, frames=vol.depth, kind="volume",
        image=ImageInfo(width=vol.width, height=vol.height, depth=vol.depth, spacing=list(vol.spacing)),
        values=RawMap(dtype="float32", shape=list(size),
                      data=base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")),
        spacing=[e / n for e, n in zip(extent, size)], windows=windows, range=[low, high], invert=False)


def _display(data: bytes, limits: ImageLimits, frame: int | None) -> DisplayResponse:
    grey = None
    dataset = _dicom_dataset(data, limits)
    if dataset is not None:
        try:
            grey = dicom_grey_display(dataset, limits, frame)
        except (InvalidImage, InvalidOption, PayloadTooLarge, UnsupportedMediaType):
            raise
        except MemoryError:
            raise PayloadTooLarge("image needs more memory to decode than is available") from None
        except Exception as exc:  # noqa: BLE001 - same never-leak rule as decode_image
            raise InvalidImage(f"image could not be decoded ({type(exc).__name__})") from None
    if grey is not None:
        values = grey.values
        height, width = values.shape
        low, high = float(values.min()), float(values.max())
        return DisplayResponse(
            format="DICOM", image=ImageInfo(width=width, height=height), frames=grey.frames, kind="grey",
            values=RawMap(dtype="float32", shape=[height, width],
                          data=base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")),
            windows=[DisplayWindow(center=c, width=w) for c, w in grey.windows], range=[low, high],
            invert=grey.invert)
    # colour DICOM and every other format: exactly the pixels decode_image gives the model (errors included)
    image = decode_image(data, limits, frame=frame)
    png = encode_png(np.ascontiguousarray(rgb8(image)), compress_level=1)
    return DisplayResponse(format=image.format, image=ImageInfo(width=image.width, height=image.height),
                           frames=image.frames, kind="rgb", png=base64.b64encode(png).decode("ascii"))


def _dicom_dataset(data: bytes, limits: ImageLimits):
    """The parsed DICOM data set when ``data`` is DICOM (with or without preamble), else ``None``."""
    if not data:
        return None
    if has_dicom_magic(data):
        return read_dicom(data)
    pil_image = open_pil(data, limits)
    if pil_image is not None:
        pil_image.close()
        return None
    return read_dicom_without_preamble(data)
