"""Measured trust per model: what ``xaas evaluate`` writes into a registry entry (``method_trust:``) and the flags that
``GET /models/{name}`` derives from it.

The sanity warnings of ``GET /methods`` were measured on the demo model; a method that passes there can fail on
another network (XGrad-CAM pointing at the wrong object on a real EfficientNet while Grad-CAM is right). So each
method's numbers on the user's own labelled data are stored per model, and the flags shown for that model are those
numbers against fixed rules (:func:`trust_flags`), not the demo's.

Rules (a method *passes* when none fires):

* **sanity** — Adebayo et al. 2018: the Spearman rank correlation between the maps of the model and of a copy with
  every layer (``full``) or only the logit layer (``head``) re-initialised is above :data:`SANITY_FAIL` (0.5, as in
  ``bench/quality.py``): the map barely depends on what the model learnt;
* **pointing** — the map's maximum lies on a box of the class less than twice as often as a uniformly random pixel;
* **deletion** — the deletion AUC (Petsiuk et al. 2018) is not below that of a uniformly random map;
* **road** — ROAD's gap ``LeRF - MoRF`` (Rong et al. 2022) is not above that of a uniformly random map.

Example::

    trust = MethodTrust(pairs=40, sanity_rank_corr=0.12, sanity_rank_corr_head=0.05, pointing=0.93,
                        pointing_random=0.09)
    trust_flags("gradcam", trust)          # [] : passes
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SANITY_FAIL", "MethodTrust", "method_trust_view", "trust_flags"]

#: Rank correlation with a randomised model above which a method fails the sanity check (bench/quality.py's rule).
SANITY_FAIL = 0.5

_UNIT = {"ge": 0.0, "le": 1.0}
_CORR = {"ge": -1.0, "le": 1.0}


class MethodTrust(BaseModel):
    """One method's measured quality on a model's own labelled data (``xaas evaluate``); ``None`` = not measured."""

    model_config = ConfigDict(extra="forbid")

    pairs: int = Field(ge=1, description="(image, class) pairs explained")
    data: str | None = Field(None, description="the folder it was measured on")
    evaluated: str | None = Field(None, description="when (UTC, ISO 8601)")
    sanity_rank_corr: float | None = Field(None, **_CORR, description="rank correlation, every layer re-initialised")
    sanity_rank_corr_head: float | None = Field(None, **_CORR, description="rank correlation, logit layer only")
    sanity_pairs: int | None = Field(None, ge=0)
    pointing: float | None = Field(None, **_UNIT, description="map maximum on a box of the class")
    pointing_random: float | None = Field(None, **_UNIT, description="the same for a uniformly random pixel")
    max_box_acc: float | None = Field(None, **_UNIT, description="best box accuracy over thresholds (IoU >= 0.5)")
    best_threshold: float | None = Field(None, **_UNIT)
    deletion_auc: float | None = Field(None, **_UNIT, description="lower is better")
    insertion_auc: float | None = Field(None, **_UNIT, description="higher is better")
    deletion_auc_random: float | None = Field(None, **_UNIT, description="deletion AUC of a uniformly random map")
    road_morf: float | None = Field(None, **_UNIT, description="ROAD, most relevant first: lower is better")
    road_lerf: float | None = Field(None, **_UNIT, description="ROAD, least relevant first: higher is better")
    road_morf_random: float | None = Field(None, **_UNIT)
    road_lerf_random: float | None = Field(None, **_UNIT)
    faithfulness_pairs: int | None = Field(None, ge=0, description="pairs of deletion/insertion")
    road_pairs: int | None = Field(None, ge=0)


def trust_flags(method: str, trust: MethodTrust) -> list[str]:
    """The rules of the module docstring that ``trust`` breaks, each as a sentence with its numbers."""
    flags: list[str] = []
    full, head = trust.sanity_rank_corr, trust.sanity_rank_corr_head
    worst = max((v for v in (full, head) if v is not None), default=None)
    if worst is not None and worst > SANITY_FAIL:
        flags.append(f"sanity: {method} fails the model-parameter randomisation check on this model (rank "
                     f"correlation {_n(full)} all layers / {_n(head)} logit layer re-initialised > {SANITY_FAIL})")
    if trust.pointing is not None and trust.pointing_random is not None and \
            trust.pointing < 2 * trust.pointing_random:
        flags.append(f"pointing: its maximum is on the object in {_n(trust.pointing)} of pairs, less than twice a "
                     f"random pixel's {_n(trust.pointing_random)}")
    if trust.deletion_auc is not None and trust.deletion_auc_random is not None and \
            trust.deletion_auc >= trust.deletion_auc_random:
        flags.append(f"deletion: AUC {_n(trust.deletion_auc)} is no better than a random map's "
                     f"{_n(trust.deletion_auc_random)}")
    gaps = (trust.road_morf, trust.road_lerf, trust.road_morf_random, trust.road_lerf_random)
    if all(v is not None for v in gaps):
        gap = trust.road_lerf - trust.road_morf                              # type: ignore[operator]
        random_gap = trust.road_lerf_random - trust.road_morf_random         # type: ignore[operator]
        if gap <= random_gap:
            flags.append(f"road: LeRF - MoRF gap {gap:.3f} is no better than a random map's {random_gap:.3f}")
    return flags


def method_trust_view(method: str, demo_sanity: str | None, trust: MethodTrust | None) -> dict[str, Any]:
    """What ``/models/{name}`` shows for one method: measured flags when the entry has them, else the demo's."""
    if trust is None:
        return {"source": "demo", "passes": demo_sanity is None,
                "flags": [f"sanity (measured on the demo model): {demo_sanity}"] if demo_sanity else [],
                "measured": None}
    flags = trust_flags(method, trust)
    return {"source": "measured", "passes": not flags, "flags": flags, "measured": trust.model_dump()}


def _n(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"
