"""The result cache without HTTP: LRU by bytes, immutable entries, stable keys; weights digests; If-None-Match."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from torch import nn

from service.api.conditional import parse_if_none_match
from service.cache import ENTRY_OVERHEAD, CachedMaps, CacheObserver, MapKey, ResultCache, entity_tag
from service.handlers import HeldTags
from service.inference import TargetMap
from service.loaders import file_digest, state_dict_digest, weights_digest

KEY = MapKey(model="demo", weights="w" * 64, config="c" * 64, image="i" * 64, frame=0, method="gradcam", params=(),
             layer="features", targets=(0,), top_k=None, min_probability=None)


def _key(n: int) -> MapKey:
    return dataclasses.replace(KEY, image=f"{n:064x}")


def _entry(side: int = 16, rows: int = 1) -> CachedMaps:
    return CachedMaps.freeze([TargetMap(i, 0.5, np.ones((side, side), np.float32)) for i in range(rows)], 128, 96)


class Recorder(CacheObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def cache_hit(self) -> None:
        self.events.append(("hit", 1))

    def cache_miss(self) -> None:
        self.events.append(("miss", 1))

    def cache_evicted(self, entries: int) -> None:
        self.events.append(("evicted", entries))

    def cache_size(self, nbytes: int) -> None:
        self.events.append(("bytes", nbytes))


def test_an_entry_weighs_its_maps_plus_a_small_overhead():
    entry = _entry(side=16, rows=2)
    assert entry.nbytes == 2 * 16 * 16 * 4 + 3 * ENTRY_OVERHEAD


def test_entries_are_private_read_only_copies():
    batch = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)  # what a batch hands out: views of one array
    entry = CachedMaps.freeze([TargetMap(3, 0.9, batch[1])], 8, 8)
    [row] = entry.maps
    assert row.heatmap.base is None and not np.shares_memory(row.heatmap, batch)
    assert row.heatmap.nbytes == 4 * 4 * 4
    with pytest.raises(ValueError):
        row.heatmap[0, 0] = 1.0
    batch[1] = -1  # the batch's array may be reused or written: the entry does not change
    np.testing.assert_array_equal(row.heatmap, np.arange(16, 32, dtype=np.float32).reshape(4, 4))
    assert (row.index, row.score, entry.width, entry.height) == (3, 0.9, 8, 8)


def test_lru_evicts_the_least_recently_used_until_the_bytes_fit():
    size = _entry().nbytes
    observer = Recorder()
    cache = ResultCache(2 * size, observer=observer)
    for n in range(2):
        assert cache.put(_key(n), _entry())
    assert cache.get(_key(0)) is not None  # 0 is now more recent than 1
    assert cache.put(_key(2), _entry())
    assert _key(1) not in cache and _key(0) in cache and _key(2) in cache
    assert len(cache) == 2 and cache.nbytes == 2 * size <= cache.max_bytes
    assert cache.get(_key(1)) is None
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 1)
    assert ("evicted", 1) in observer.events and observer.events[-1] == ("miss", 1)
    assert [n for kind, n in observer.events if kind == "bytes"][-1] == 2 * size


def test_one_large_entry_evicts_several_small_ones():
    small, large = _entry(side=8), _entry(side=32)
    cache = ResultCache(large.nbytes + small.nbytes)
    for n in range(4):
        cache.put(_key(n), small)
    assert len(cache) == 4
    cache.put(_key(9), large)
    assert list(cache._entries) == [_key(3), _key(9)] and cache.evictions == 3
    assert cache.nbytes == large.nbytes + small.nbytes


def test_an_entry_larger_than_the_bound_is_not_stored():
    cache = ResultCache(_entry(side=8).nbytes)
    cache.put(_key(0), _entry(side=8))
    assert not cache.put(_key(1), _entry(side=64))
    assert _key(0) in cache and _key(1) not in cache and cache.evictions == 0


def test_replacing_a_key_keeps_the_byte_count_exact():
    cache = ResultCache(10**6)
    cache.put(KEY, _entry(side=8))
    cache.put(KEY, _entry(side=16))
    assert len(cache) == 1 and cache.nbytes == _entry(side=16).nbytes


def test_zero_bytes_turns_the_cache_off():
    observer = Recorder()
    cache = ResultCache(0, observer=observer)
    assert not cache.enabled and not cache.put(KEY, _entry())
    assert cache.get(KEY) is None and len(cache) == 0 and observer.events == []


def test_concurrent_puts_and_gets_keep_the_bound_and_never_tear_entries():
    entries = [_entry(side=8 + n % 3) for n in range(3)]
    cache = ResultCache(5 * entries[0].nbytes)
    errors: list[str] = []

    def work(seed: int) -> None:
        for i in range(300):
            n = (seed * 7 + i) % 12
            cache.put(_key(n), entries[n % 3])
            got = cache.get(_key((n + 5) % 12))
            if got is not None and got.maps[0].heatmap.shape[0] not in (8, 9, 10):
                errors.append("torn")
            if cache.nbytes > cache.max_bytes:
                errors.append("over the bound")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.nbytes == sum(e.nbytes for e in cache._entries.values()) <= cache.max_bytes


def test_key_digest_is_stable_and_tells_every_field_apart():
    assert KEY.digest() == dataclasses.replace(KEY).digest()
    assert len(KEY.digest()) == 64
    variants = [dataclasses.replace(KEY, **{name: value}) for name, value in [
        ("model", "other"), ("weights", "x" * 64), ("config", "y" * 64), ("image", "j" * 64), ("frame", 1),
        ("method", "layercam"), ("params", (("samples", 4),)), ("layer", "features.block5"), ("targets", (1,)),
        ("targets", (0, 1)), ("top_k", 2), ("min_probability", 0.5),
    ]]
    digests = {KEY.digest(), *(v.digest() for v in variants)}
    assert len(digests) == len(variants) + 1


def test_entity_tag_is_weak_and_covers_the_rendering_options():
    tag = entity_tag(KEY, {"endpoint": "explain", "outputs": ["heatmap"]})
    assert tag.startswith('W/"') and tag.endswith('"') and len(tag) == 3 + 32 + 1
    assert tag == entity_tag(KEY, {"outputs": ["heatmap"], "endpoint": "explain"})  # member order is irrelevant
    assert tag != entity_tag(KEY, {"endpoint": "explain", "outputs": ["raw"]})
    assert tag != entity_tag(dataclasses.replace(KEY, frame=2), {"endpoint": "explain", "outputs": ["heatmap"]})


# ---------------------------------------------------------------------------------------------- weights digest


def test_the_weights_digest_changes_when_one_weight_changes():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = state_dict_digest(net)
    assert before == state_dict_digest(net) and len(before) == 64
    twin = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    twin.load_state_dict(net.state_dict())
    assert state_dict_digest(twin) == before  # a function of the weights, not of the object
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-3
    assert state_dict_digest(net) != before
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] -= 1e-3
    net[1].running_mean[0] += 1.0  # buffers change the outputs too
    assert state_dict_digest(net) != before


def test_the_weights_digest_sees_dtypes_and_shapes_not_only_bytes():
    a, b = nn.Module(), nn.Module()
    a.register_buffer("w", torch.zeros(2, 3))
    b.register_buffer("w", torch.zeros(3, 2))  # the same bytes in another shape
    assert state_dict_digest(a) != state_dict_digest(b)
    c = nn.Module()
    c.register_buffer("w", torch.zeros(2, 3, dtype=torch.bfloat16))  # no NumPy dtype: still digested
    assert state_dict_digest(c) not in (state_dict_digest(a), state_dict_digest(b))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices
def test_torchscript_models_are_digested_by_their_file(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    digest = weights_digest(f"torchscript:{path.name}", torch.jit.load(str(path)), tmp_path)
    assert digest == file_digest(path)
    other = tmp_path / "n.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(other))  # another random init
    assert file_digest(other) != digest


# ---------------------------------------------------------------------------------------------- If-None-Match

TAG = 'W/"0123abcd"'


@pytest.mark.parametrize("lines, expected", [
    ([], None),
    ([""], None),
    (["*"], HeldTags(any=True)),
    ([" * "], HeldTags(any=True)),
    (['"0123abcd"'], HeldTags(opaque=frozenset({'"0123abcd"'}))),
    ([TAG], HeldTags(opaque=frozenset({'"0123abcd"'}))),
    (['"a", W/"b" ,"c"'], HeldTags(opaque=frozenset({'"a"', '"b"', '"c"'}))),
    (['"a"', 'W/"b"'], HeldTags(opaque=frozenset({'"a"', '"b"'}))),           # several header lines: one list
    (['"a",,  , "b",'], HeldTags(opaque=frozenset({'"a"', '"b"'}))),          # empty list members are allowed
    (['"a,b"'], HeldTags(opaque=frozenset({'"a,b"'}))),                       # a comma inside the quotes
    (['""'], HeldTags(opaque=frozenset({'""'}))),
    (["abc"], None),                                                          # unquoted: not an entity tag
    (['"a" "b"'], None),
    (['w/"a"'], None),                                                        # the weak prefix is case-sensitive
    (['"a', 'b"'], None),
    (['"a"b"'], None),
    (['*, "a"'], None),
    (['"caf\u00e9"'], HeldTags(opaque=frozenset({'"caf\u00e9"'}))),           # obs-text, as Starlette decodes it
])
def test_if_none_match_is_parsed_as_rfc_9110_says(lines, expected):
    assert parse_if_none_match(lines) == expected


def test_held_tags_compare_weakly():
    held = parse_if_none_match(['"other", "0123abcd"'])
    assert held is not None and held.matches(TAG) and held.matches('"0123abcd"')
    assert not held.matches('W/"0123abcde"')
    assert HeldTags(any=True).matches(TAG)
    assert not HeldTags().matches(TAG)
