"""The audit report (``POST /audit``'s job result, ``xaas audit``'s ``audit.json``): see :mod:`service.audit` for
what each number measures. Kept apart from :mod:`service.api.schemas` for size; it depends on nothing there."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["AuditBorder", "AuditClass", "AuditExample", "AuditReport"]


class AuditBorder(BaseModel):
    top: float
    bottom: float
    left: float
    right: float


class AuditExample(BaseModel):
    file: str
    pair: int = Field(description="Index of the (image, class) pair in the set.")
    in_object: float | None = Field(None, description="With boxes: the map's mass share on the class's boxes.")
    pointing: bool | None = Field(None, description="With boxes: whether the map's maximum is on a box of the class.")
    agreement: float | None = Field(None, description="Boxless: cosine of this map with the class's other maps.")


class AuditClass(BaseModel):
    pairs: int = Field(description="(image, class) pairs of the class with a non-empty map.")
    in_object: float | None = Field(None, description="With boxes: mean mass share on the class's boxes (or masks).")
    background: float | None = Field(None, description="With boxes: 1 - in_object.")
    object_area: float | None = Field(None, description="With boxes: mean area share of the boxes or masks (what a "
                                                        "uniform map would put on them).")
    pointing: float | None = Field(None, description="With boxes: share of maps whose maximum is on the object.")
    located_by: Literal["box", "mask", "mixed"] | None = Field(
        None, description="With boxes: what located the class's objects: their boxes, their masks (labels.json "
                          "'mask'), or both (some objects with a mask, some with only a box).")
    border: AuditBorder = Field(description="Mean mass share in each border band.")
    centre: float = Field(description="Mean mass share in no border band.")
    top5: float = Field(description="Share of the mean map's mass in its top 5 % pixels (0.05: uniform).")
    entropy: float = Field(description="Normalised Shannon entropy of the mean map (1: uniform).")
    agreement: float | None = Field(None, description="Mean cosine of each map with the class's other maps.")
    baseline: float | None = Field(None, description="Mean cosine of each map with the other classes' maps.")
    excess: float | None = Field(None, description="agreement - baseline: high when the maps sit at a fixed place.")
    peak_cluster: float = Field(description="Share of maxima within 0.1 of the side of the class's median maximum.")
    flags: list[str] = Field(description="outside, border:<side>, fixed-place (see rules).")
    examples: list[AuditExample]
    mean_map: list[list[float]] = Field(description="The class's mean unit map, 64 x 64, row-major.")


class AuditReport(BaseModel):
    model_config = {"protected_namespaces": ()}

    model: str
    method: str
    data: str = Field(description="The folder (CLI) or the uploaded archive's name.")
    mode: Literal["boxes", "boxless"]
    images: int
    pairs: int
    empty_maps: int = Field(description="Pairs whose map was all zero (left out).")
    border: float = Field(description="Border band width as a fraction of the side.")
    rules: dict[str, str] = Field(description="Each flag's rule.")
    classes: dict[str, AuditClass]
    flagged: list[str]
    report_html: str | None = Field(None, description="POST /audit: where the self-contained HTML report is "
                                                      "(GET /jobs/{id}/report.html).")
