"""DICOM results for DICOM inputs, built by highdicom: Parametric Map, Segmentation, Secondary Capture.

Each object references the source instance, lands in the source's Study in a new Series with new UIDs, and carries
the IHE AI Results conventions (the algorithm in ContributingEquipmentSequence, ContentCreatorName).

The source data set is re-read here from the uploaded bytes: the decoder (:mod:`service.imaging.dicom`) never
exposes identifying attributes, and these objects are the only place where patient identity is copied (they must
attach to the patient's study). Nothing from the data set reaches an error message: highdicom failures become a
fixed detail.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .errors import InvalidImage, InvalidOption
from .rendering import _resize

__all__ = ["DICOM_OUTPUTS", "build_outputs", "parametric_map", "read_source", "refuse_non_dicom", "secondary_capture",
           "segmentation", "source_grid_map", "to_part10", "measurement_report", "build_report"]

#: ``outputs`` values that ask for a DICOM object, and the key of each in the response's ``dicom`` member.
DICOM_OUTPUTS = {"dicom-pm": "pm", "dicom-seg": "seg", "dicom-sc": "sc"}

_MANUFACTURER = "xaas"
_CREATOR = "xaas^explanation-service"
_SERIES_NUMBERS = {"pm": 9001, "seg": 9002, "sc": 9003, "sr": 9004}


def refuse_non_dicom(data: bytes) -> None:
    """A 422 naming ``outputs`` when the upload is not DICOM Part 10 (checked before any decoding)."""
    from .imaging.dicom import has_dicom_magic

    if not has_dicom_magic(data):
        raise InvalidOption("DICOM outputs (dicom-pm, dicom-seg, dicom-sc, dicom-sr) need a DICOM Part 10 input image",
                            errors=[_field_error("DICOM outputs need a DICOM input")])


def read_source(data: bytes) -> Any:
    """The uploaded DICOM data set; a 422 naming ``outputs`` when the upload is not DICOM Part 10."""
    import pydicom

    refuse_non_dicom(data)
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - the decoder already accepted it; any failure here is still the client's file
        raise InvalidImage("DICOM file is corrupt: its header could not be parsed") from None


def _field_error(message: str) -> Any:
    from .errors import FieldError

    return FieldError("outputs", message)


def _quantity(family: str, method: str) -> Any:
    from pydicom.sr.codedict import codes

    if method == "cam":
        return codes.DCM.ClassActivation
    if family == "cam":
        return codes.DCM.GradientWeightedClassActivation
    return codes.DCM.Saliency


def _equipment(method: str, model: str, version: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [hd.ContributingEquipment(manufacturer=_MANUFACTURER, manufacturer_model_name=method,
                                     software_versions=version, device_serial_number=model,
                                     purpose_of_reference=codes.DCM.ProcessingEquipment)]


def _common(kind: str, method: str, model: str, version: str) -> dict[str, Any]:
    import highdicom as hd

    return dict(series_instance_uid=hd.UID(), series_number=_SERIES_NUMBERS[kind], sop_instance_uid=hd.UID(),
                instance_number=1, manufacturer=_MANUFACTURER, manufacturer_model_name=method,
                software_versions=version, device_serial_number=model)


def source_grid_map(heatmap: np.ndarray, source: Any) -> np.ndarray:
    """The raw map (non-finite values → 0) resampled bilinearly to the source's Rows × Columns, float32."""
    values = np.asarray(heatmap, dtype=np.float32)
    values = np.where(np.isfinite(values), values, np.float32(0.0)).astype(np.float32)
    return _resize(values, int(source.Columns), int(source.Rows))


def parametric_map(source: Any, heatmap: np.ndarray, *, method: str, family: str, model: str, version: str,
                   slices: list[Any] | None = None) -> Any:
    """A float32 Parametric Map of the raw map on the source grid, with a Real World Value Mapping (identity).
    With ``slices`` (a volume's source instances, in volume order) ``heatmap`` is the map on their voxel grid
    ``[D, H, W]`` and the result is multi-frame, one frame per source slice, referencing every one."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    values = source_grid_map(heatmap, source)[None] if slices is None else np.asarray(heatmap, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=method[:16], lut_explanation=f"{method} map of model {model}"[:64], unit=codes.UCUM.NoUnits,
        value_range=(low, high), slope=1.0, intercept=0.0, quantity_definition=_quantity(family, method))
    center, width = (low + high) / 2.0, high - low
    return hd.pm.ParametricMap(
        source_images=slices or [source], pixel_array=values, **_common("pm", method, model, version),
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        # LINEAR_EXACT: the map's range is often below 1, which a plain LINEAR window width may not be
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=center, window_width=width,
                                                         voi_lut_function="LINEAR_EXACT")],
        content_label="XAAS_MAP", content_description=f"{method} explanation"[:64], content_creator_name=_CREATOR,
        contributing_equipment=_equipment(method, model, version))


def segmentation(source: Any, heatmap: np.ndarray, *, threshold: float, label: str, method: str, model: str,
                 version: str, fractional: bool = False, slices: list[Any] | None = None) -> Any:
    """A binary SEG of the map at ``threshold`` × its maximum (FRACTIONAL: the normalised map itself); with
    ``slices`` a volume's (see :func:`parametric_map`), one frame per source slice."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    values = source_grid_map(heatmap, source)[None] if slices is None else np.asarray(heatmap, dtype=np.float32)
    peak = float(values.max())
    unit = np.clip(values / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(values)
    if fractional:
        pixels, kind = unit.astype(np.float32), hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        pixels, kind = (unit >= threshold).astype(np.uint8) if peak > 0 else np.zeros(unit.shape, np.uint8), \
            hd.seg.SegmentationTypeValues.BINARY
    algorithm = hd.AlgorithmIdentificationSequence(name=f"xaas {method}"[:64], version=version,
                                                   family=codes.DCM.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"{label} ({method})"[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
    return hd.seg.Segmentation(
        source_images=slices or [source], pixel_array=pixels, segmentation_type=kind, segment_descriptions=[segment],
        **_common("seg", method, model, version), content_label="XAAS_SEG", content_creator_name=_CREATOR,
        contributing_equipment=_equipment(method, model, version), omit_empty_frames=False)


def secondary_capture(source: Any, overlay_rgb: np.ndarray, *, method: str, model: str, version: str) -> Any:
    """The colour overlay (uint8 RGB at the source size) as a Secondary Capture image in the source's study."""
    import highdicom as hd

    common = _common("sc", method, model, version)
    for key in ("manufacturer_model_name", "software_versions", "device_serial_number"):
        common.pop(key)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(overlay_rgb, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, patient_orientation=_patient_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        contributing_equipment=_equipment(method, model, version), **common)
    sc.ContentCreatorName = _CREATOR
    sc.DerivationDescription = f"{method} explanation overlay of model {model}"[:1024]
    from pydicom.dataset import Dataset

    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def _patient_orientation(source: Any) -> tuple[str, str]:
    """PatientOrientation (row, column directions) from ImageOrientationPatient: the dominant axis of each."""
    try:
        cosines = [float(v) for v in source.ImageOrientationPatient]
    except Exception:  # noqa: BLE001 - no (valid) orientation: the conventional axial default
        cosines = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]

    def letter(vector: list[float]) -> str:
        axis = int(np.argmax(np.abs(vector)))
        return ("L", "P", "H")[axis] if vector[axis] > 0 else ("R", "A", "F")[axis]

    return letter(cosines[:3]), letter(cosines[3:6])


def _laterality(ds: Any, source: Any) -> None:
    """General Series Laterality is Type 2C (paired body parts): the source's value, else present and empty."""
    if "Laterality" not in ds:
        ds.Laterality = source.get("Laterality", "") or ""


def to_part10(dataset: Any) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_report(source: Any, boxes: list[tuple[str, float, list[int]]], *, method: str, model: str,
                 version: str) -> bytes:
    """Part 10 bytes of the TID 1500 SR of ``boxes``; highdicom failures become a fixed, identity-free detail."""
    try:
        return to_part10(measurement_report(source, boxes, method=method, model=model, version=version))
    except Exception as exc:  # noqa: BLE001 - highdicom's messages may quote attribute values: never pass them on
        raise InvalidImage(f"the DICOM source cannot be referenced by a DICOM result ({type(exc).__name__})") from None


def build_outputs(kinds: list[str], source: Any, heatmap: np.ndarray, *, overlay_rgb: np.ndarray | None,
                  threshold: float, label: str, method: str, family: str, model: str, version: str,
                  fractional: bool = False, slices: list[Any] | None = None) -> dict[str, bytes]:
    """Part 10 bytes of each requested DICOM output, keyed ``pm``/``seg``/``sc``; with ``slices`` (a volume's
    source instances, ``source`` the first of them) ``heatmap`` is the map on their voxel grid ``[D, H, W]``."""
    out: dict[str, bytes] = {}
    try:
        for kind in kinds:
            if kind == "dicom-pm":
                ds = parametric_map(source, heatmap, method=method, family=family, model=model, version=version,
                                    slices=slices)
            elif kind == "dicom-seg":
                ds = segmentation(source, heatmap, threshold=threshold, label=label, method=method, model=model,
                                  version=version, fractional=fractional, slices=slices)
            elif kind == "dicom-sc":
                assert overlay_rgb is not None, "the overlay is rendered before a Secondary Capture is built"
                ds = secondary_capture(source, overlay_rgb, method=method, model=model, version=version)
            else:
                continue
            if kind != "dicom-seg":  # dciodvfy wants Laterality (2C) on PM and SC, and refuses it on SEG
                _laterality(ds, source)
            out[DICOM_OUTPUTS[kind]] = to_part10(ds)
    except (InvalidOption, InvalidImage):
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom's messages may quote attribute values: never pass them on
        raise InvalidImage(f"the DICOM source cannot be referenced by a DICOM result ({type(exc).__name__})") from None
    return out


def _procedures() -> dict[str, Any]:
    from pydicom.sr.codedict import codes

    return {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion}


def measurement_report(source: Any, boxes: list[tuple[str, float, list[int]]], *, method: str, model: str,
                       version: str) -> Any:
    """A TID 1500 Measurement Report (Comprehensive 3D SR): one planar ROI per box ``(label, probability,
    [x0, y0, x1, y1])`` — an SCOORD POLYLINE (closed rectangle) on the source image, finding = the class, the
    probability as a measurement, and the algorithm identification (name, version, method)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=f"xaas {model}"[:64],
                                                        manufacturer_name=_MANUFACTURER, model_name=method,
                                                        serial_number=model)
    observer_context = hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    algorithm = hd.sr.AlgorithmIdentification(name=f"xaas {method}"[:64], version=version,
                                              parameters=[f"model={model}"[:64]])
    reference = hd.sr.SourceImageForRegion.from_source_image(source)
    groups = []
    for number, (label, probability, (x0, y0, x1, y1)) in enumerate(boxes, start=1):
        # pixel corners: x1/y1 are exclusive pixel indices, so the box's outline runs along x1 and y1
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                   source_image=reference)
        probability_measurement = hd.sr.Measurement(
            name=hd.sr.CodedConcept("PROB", "99XAAS", "Probability of the class"), value=float(probability),
            unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"box {number}"),
            referenced_region=region,
            finding_type=hd.sr.CodedConcept(str(label)[:16] or "class", "99XAAS", str(label)[:64] or "class"),
            algorithm_id=algorithm, measurements=[probability_measurement]))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(
        observer_person_context=None, observer_device_context=observer_context),
        procedure_reported=_procedures().get(str(source.get("Modality", "")), codes.SCT.ImagingProcedure),
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    common = _common("sr", method, model, version)
    for key in ("manufacturer_model_name", "software_versions", "device_serial_number"):
        common.pop(key)
    sr = hd.sr.Comprehensive3DSR(evidence=[source], content=report, **common, is_complete=True, is_final=False,
                                 is_verified=False, institution_name=None)
    sr.ContentCreatorName = _CREATOR
    _add_equipment(sr, method, model, version)
    return sr


def _add_equipment(ds: Any, method: str, model: str, version: str) -> None:
    """ContributingEquipmentSequence for SOP classes whose highdicom constructor does not take it (SR)."""
    for item in _equipment(method, model, version):
        sequence = list(ds.get("ContributingEquipmentSequence", []))
        ds.ContributingEquipmentSequence = [*sequence, item]
