"""The result cache: computed explanation maps, keyed by everything that determines them.

A review screen asks for the same image again and again — another method, another opacity, another output. The model
pass dominates the cost of an answer; rendering (PNG encoding, box extraction) is cheap and depends on options the
maps do not. So the cache holds the *maps* (the ``TargetMap`` rows ``Runtime.explain`` returns, plus the image size
that rendering needs without the model), never the PNGs: one entry answers every colormap, opacity and output, and
``/explain`` and ``/localize`` share an entry whenever their map keys agree.

Key (:class:`MapKey`): the model's name, its weights' digest (``LoadedModel.weights_digest``) and the registry fields
that shape an answer (``LoadedModel.config_digest``: labels, task, preprocessing), the uploaded image bytes' sha256,
the frame, the method, its validated parameters (defaults filled in, so an omitted default and an explicit one agree),
the explained layer (resolved, so omitting ``layer`` and naming the model's target layer agree) and the target
selection (explicit classes, else ``top_k`` and ``min_probability``). The key describes the computation completely,
so its digest also names the result: :func:`entity_tag` adds the rendering options and the service version and gives
the weak ``ETag`` of the response.

Bound: bytes, not entries — maps range from 16×16 (CAM on the demo model) to the model's input size (gradient
methods) times the number of targets. An entry weighs its maps' ``nbytes`` plus :data:`ENTRY_OVERHEAD` (key,
dataclasses, dict slot); the least recently used entries are evicted until the total fits. An entry larger than the
whole bound is not stored (it would evict everything and then itself). ``max_bytes = 0`` turns the cache off.

Entries are immutable (tuples of rows whose arrays are private, read-only copies), so a reader never sees a
half-written entry, a renderer cannot alter what the next request reads, and two concurrent misses of one key simply
store equal entries (the second replaces the first). One lock guards the dictionary; it is held for dictionary
operations only, never while maps are copied or rendered.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import __version__
from .imaging.volume import VolumeGeometry
from .inference import TargetMap

__all__ = ["ENTRY_OVERHEAD", "CacheObserver", "CachedMaps", "MapKey", "ResultCache", "entity_tag"]

ENTRY_OVERHEAD = 512
"""Bytes counted per entry and per row on top of the maps' own bytes: the key, the dataclasses, the dict slot."""


@dataclass(frozen=True)
class MapKey:
    """Everything that determines the maps of one explanation (see the module docstring)."""

    model: str
    weights: str                       # LoadedModel.weights_digest
    config: str                        # LoadedModel.config_digest
    image: str                         # sha256 hex of the uploaded bytes
    frame: int
    method: str
    params: tuple[tuple[str, Any], ...]  # validated, sorted by name
    layer: str | None                  # the layer explained (CAM methods), else None
    targets: tuple[int, ...]           # explicit classes, in request order (the order of the answer's rows)
    top_k: int | None                  # without explicit targets (ignored, so None, with them)
    min_probability: float | None
    region: str | None = None          # segmentation: the region's canonical text (RegionRequest.key)
    detection: str | None = None       # detection: the detection's canonical text (DetectionRequest.key)

    def digest(self) -> str:
        """sha256 of a canonical JSON rendering: the same across processes and restarts (unlike ``hash``)."""
        fields = [self.model, self.weights, self.config, self.image, self.frame, self.method,
                  [list(p) for p in self.params], self.layer, list(self.targets), self.top_k, self.min_probability]
        # Appended only when set, so classifiers' keys (and persisted entries) keep their digests.
        extra = ([self.region] if self.region is not None else []) + \
            ([{"detection": self.detection}] if self.detection is not None else [])
        return _sha256_json(fields + extra)


def entity_tag(key: MapKey, representation: Mapping[str, Any]) -> str:
    """The weak ETag (``W/"<hex>"``) of a response: the map key, the endpoint and rendering options that shape the
    body (``representation``), and the service version (a new release may render or compute differently).

    Weak (RFC 9110 §8.8.1) because equal tags promise equivalent content, not equal bytes: recomputing an evicted
    entry may differ in the last float bits (another batch composition, another device), hence in PNG bytes."""
    return f'W/"{_sha256_json([__version__, key.digest(), dict(representation)])[:32]}"'


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class CachedMaps:
    """One entry: the explanation's rows (read-only arrays) and the original image size they are rendered at."""

    maps: tuple[TargetMap, ...]
    width: int
    height: int
    volume: VolumeGeometry | None = None   # volumes: the source's voxel grid and placement

    @classmethod
    def freeze(cls, maps: Iterable[TargetMap], width: int, height: int, volume: VolumeGeometry | None = None
               ) -> CachedMaps:
        """Private read-only copies: a batch hands out *views* of one array for all its images, and an entry must
        neither keep the whole batch alive (its size would be wrong) nor share memory another request can write."""
        rows = []
        for item in maps:
            heatmap = _frozen(item.heatmap, np.float32)
            probability = _frozen(item.probability, np.float32) if item.probability is not None else None
            predicted = _frozen(item.predicted, bool) if item.predicted is not None else None
            rows.append(TargetMap(item.index, item.score, heatmap, probability, predicted, item.detection))
        return cls(tuple(rows), int(width), int(height), volume)

    @property
    def nbytes(self) -> int:
        planes = sum(int(a.nbytes) for m in self.maps for a in (m.heatmap, m.probability, m.predicted)
                     if a is not None)
        return ENTRY_OVERHEAD * (1 + len(self.maps)) + planes


def _frozen(array: np.ndarray, dtype: Any) -> np.ndarray:
    copy = np.array(array, dtype=dtype, copy=True)
    copy.flags.writeable = False
    return copy


class CacheObserver:
    """Receives cache events (the metrics module implements it); methods must be cheap and never raise."""

    def cache_hit(self) -> None: ...
    def cache_miss(self) -> None: ...
    def cache_evicted(self, entries: int) -> None: ...
    def cache_size(self, nbytes: int) -> None: ...


class ResultCache:
    """A thread-safe LRU of :class:`CachedMaps` bounded by bytes. ``max_bytes = 0``: off (nothing stored, no hits,
    nothing counted)."""

    def __init__(self, max_bytes: int, observer: CacheObserver | None = None):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._observer = observer or CacheObserver()
        self._entries: OrderedDict[MapKey, CachedMaps] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: MapKey) -> bool:
        """Presence without counting a hit or refreshing recency (for tests and diagnostics)."""
        with self._lock:
            return key in self._entries

    def get(self, key: MapKey) -> CachedMaps | None:
        """The entry (now the most recently used), or None; counts a hit or a miss."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if entry is not None:
            self._observer.cache_hit()
        else:
            self._observer.cache_miss()
        return entry

    def put(self, key: MapKey, entry: CachedMaps) -> bool:
        """Store ``entry`` as the most recently used, evicting the least recently used ones until the bound holds.
        False when not stored (cache off, or the entry alone exceeds the bound)."""
        size = entry.nbytes
        if not self.enabled or size > self.max_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += size
            evicted = 0
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
                evicted += 1
            self.evictions += evicted
            total = self._bytes
        if evicted:
            self._observer.cache_evicted(evicted)
        self._observer.cache_size(total)
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
        self._observer.cache_size(0)
