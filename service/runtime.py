"""The service core without HTTP: registry + one DynamicBatcher per model + a thread pool for decoding/rendering."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .batching import DynamicBatcher
from .cache import ResultCache
from .config import Settings
from .engine.detection import Detection
from .engine.targets import Region
from .errors import ConfigError, InvalidImage, ModelNotReady, ShuttingDown, TooManyTargets
from .imaging import DecodedImage, ImageLimits, TileLimit, decode_image, to_bag, to_model_input
from .imaging.volume import VolumeLimits, decode_volume, is_volume_container, volume_to_model_input
from .inference import (
    ExplainWork,
    PredictResult,
    PredictWork,
    TargetMap,
    explain_steps,
    predict_key,
    run_work,
    split_results,
)
from .jobs import Job, JobScheduler, JobStore, ReadyWork, StepsWork
from .metrics import Metrics
from .registry import LoadedModel, ModelRegistry

log = logging.getLogger("xaas.runtime")
T = TypeVar("T")


class Runtime:
    """Owns the models and their workers. ``start`` loads in a background thread so liveness answers meanwhile."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None, metrics: Metrics | None = None,
                 job_store: JobStore | None = None):
        """``job_store``: where job records live (default: in memory; a shared store lets replicas see each other's
        jobs, see service/ray_jobs.py)."""
        self.settings = settings
        self.registry = registry or ModelRegistry.from_file(Path(settings.models), device_policy=settings.device)
        self.metrics = metrics or Metrics()
        self.batchers: dict[str, DynamicBatcher] = {}
        self.executor = ThreadPoolExecutor(max_workers=settings.workers_threads, thread_name_prefix="xaas-io")
        self.limits = ImageLimits(max_pixels=settings.max_pixels, max_frames=settings.max_frames)
        self.volume_limits = VolumeLimits(max_voxels=settings.max_voxels, max_slices=min(settings.max_frames, 4096))
        self.shutting_down = False
        self._decoding: dict[str, int] = {}  # per model: requests decoding now, i.e. jobs about to be submitted
        self._decoding_lock = threading.Lock()
        self._loader: threading.Thread | None = None
        if job_store is None and settings.job_store == "redis":
            from .redis_jobs import RedisJobStore

            job_store = RedisJobStore.from_settings(settings)
        self.jobs = JobScheduler(job_store, max_active=settings.max_jobs, ttl=settings.job_ttl,
                                 slice_steps=settings.job_slice_steps, slice_seconds=settings.job_slice_ms / 1000,
                                 max_seconds=settings.job_max_seconds, executor=self.executor)
        self.cache = ResultCache(settings.cache_bytes, observer=self.metrics)  # explanation maps, shared by endpoints
        # (model, conv layer) -> FilterResponse; the weights are frozen, so a grid never changes
        self.rendered_filters: dict[tuple[str, str], Any] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Load in the background. Idempotent: a host that loads and warms before serving (a Ray Serve replica's
        constructor) starts it first, and the app's lifespan then finds it started."""
        if self._loader is not None:
            return
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        def load() -> None:
            try:
                self.registry.load_all()
            except ConfigError as exc:
                log.error("model registry failed to load: %s", exc)
                if on_failure:
                    on_failure(str(exc))
                return
            for model in self.registry.loaded():
                self.batchers[model.name] = self._make_batcher(model)
                self.metrics.model_ready.labels(model.name).set(1)

        self._loader = threading.Thread(target=load, name="xaas-loader", daemon=True)
        self._loader.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready

    @property
    def ready(self) -> bool:
        return self.registry.ready and len(self.batchers) == len(self.registry.specs) and not self.shutting_down

    def health(self) -> list[str]:
        """What is wrong with this process as a server (empty when healthy): a model not loaded, a worker thread
        that died. Draining is not a fault (a replica being shut down is not to be restarted)."""
        problems: list[str] = []
        if self.registry.state == "failed":
            problems.append(f"the model registry failed to load: {self.registry.error}")
        for name in self.registry.names():
            batcher = self.batchers.get(name)
            if batcher is None:
                problems.append(f"model {name!r} is not loaded")
            elif not batcher.alive and not self.shutting_down:
                problems.append(f"the worker thread of model {name!r} died")
        return problems

    def stop(self) -> None:
        """Drain: refuse new work, let each worker finish its queue within the grace period."""
        self.shutting_down = True
        self.jobs.stop()  # first: pending job slices must not re-queue themselves while the workers drain
        self.jobs.store.close()  # a shared store: this replica's jobs are cancelled, give its lease back
        grace = self.settings.shutdown_grace
        threads = [threading.Thread(target=b.stop, args=(grace,)) for b in self.batchers.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _make_batcher(self, model: LoadedModel) -> DynamicBatcher:
        b = model.spec.batching
        s = self.settings
        batcher = DynamicBatcher(
            model.name,
            functools.partial(run_work, model),
            max_batch_size=b.max_batch_size or s.max_batch_size,
            max_batch_delay_ms=b.max_batch_delay_ms if b.max_batch_delay_ms is not None else s.max_batch_delay_ms,
            max_queue=b.max_queue or s.max_queue,
            observer=self.metrics,
            expecting_more=lambda: self._decoding.get(model.name, 0) > 0,
        )
        batcher.start()
        return batcher

    # -- operations ------------------------------------------------------------------------------------------------
    def model(self, name: str | None) -> LoadedModel:
        if self.shutting_down:
            raise ShuttingDown()
        return self.registry.get(name)

    def batcher(self, model: LoadedModel) -> DynamicBatcher:
        try:
            return self.batchers[model.name]
        except KeyError:
            raise ModelNotReady(model.name) from None

    def resolve_targets(self, model: LoadedModel, targets: list[int | str]) -> list[int]:
        """Class indices for explicit targets (labels or indices), de-duplicated in order; 422 names a bad one."""
        out: list[int] = []
        for t in targets:
            idx = model.class_index(t)
            if idx not in out:
                out.append(idx)
        if len(out) > self.settings.max_targets:
            raise TooManyTargets(len(out), self.settings.max_targets)
        return out

    def job_chunk(self, model: LoadedModel) -> int:
        """Images per forward for a chunked method run as a job: about ``XAAS_JOB_STEP_MS`` of model time per step
        (from the forward time measured at load), so a live request waits for at most one such step."""
        per_image = max(model.forward_seconds, 1e-6)
        return max(1, int(self.settings.job_step_ms / 1000 / per_image))

    def timeout(self, requested: float | None) -> float:
        """A request may shorten, never extend, the server's deadline."""
        limit = self.settings.request_timeout
        return min(requested, limit) if requested else limit

    async def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def load_image(self, model: LoadedModel, data: bytes, *, frame: int | None = None
                         ) -> tuple[DecodedImage, Any]:
        """Decode and preprocess in the thread pool; returns the decoded image and the model input tensor."""

        def work() -> tuple[Any, Any]:
            spec = model.spec
            if model.volumetric:
                volume = decode_volume(data, self.volume_limits)
                return volume, volume_to_model_input(volume, input_size=spec.input_size, channels=spec.channels,
                                                     mean=spec.mean, std=spec.std, window=spec.window,
                                                     keep_aspect=spec.keep_aspect)
            if is_volume_container(data):
                raise InvalidImage(f"model '{model.name}' takes 2-D images; a DICOM series, zip or NIfTI volume "
                                   "is for volume models (spatial_dims: 3)")
            if model.task == "mil":   # native resolution, cut into patches; their count is checked from the header
                limits = dataclasses.replace(self.limits, tiles=TileLimit(spec.patch_size, spec.stride,
                                                                          spec.max_patches))
                image = decode_image(data, limits, frame=frame)
                return image, to_bag(image, patch=spec.patch_size, stride=spec.stride, channels=spec.channels,
                                     mean=spec.mean, std=spec.std)
            image = decode_image(data, self.limits, frame=frame)
            tensor = to_model_input(image, input_size=spec.input_size, channels=spec.channels, mean=spec.mean,
                                    std=spec.std)
            return image, tensor

        self._count_decoding(model.name, +1)
        try:
            return await self.in_thread(work)
        finally:
            self._count_decoding(model.name, -1)

    async def decode(self, data: bytes, *, frame: int | None = None) -> DecodedImage:
        """Decode only, in the thread pool: the pixels an overlay needs when the maps came from the cache. Not counted
        as decoding for the batcher, since no model work follows."""
        return await self.in_thread(decode_image, data, self.limits, frame=frame)

    def _count_decoding(self, name: str, delta: int) -> None:
        # No wake-up here on purpose: the worker re-checks on the next submit (which notifies it), so a request that
        # has just finished decoding is never left out of the batch it was about to join.
        with self._decoding_lock:
            self._decoding[name] = self._decoding.get(name, 0) + delta

    async def explain(self, model: LoadedModel, inputs: Any, *, method: str, params: dict[str, Any], layer: str | None,
                      targets: list[int], top_k: int, min_probability: float | None = None,
                      timeout: float | None = None, region: Region | None = None,
                      detection: Detection | None = None) -> list[TargetMap]:
        work = ExplainWork(inputs, method, tuple(sorted(params.items())), layer, tuple(targets), top_k, min_probability,
                           region, model.spec.activation, detection)
        return await self.batcher(model).run(work.batch_key, work, size=work.rows,
                                             timeout=timeout or self.settings.request_timeout)

    def submit_explanation(self, model: LoadedModel, inputs: Any, *, method: str, params: dict[str, Any],
                           layer: str | None, targets: list[int], top_k: int, min_probability: float | None = None,
                           kind: str, meta: dict[str, Any], finish: Callable[[list[TargetMap]], dict[str, Any]],
                           ready: list[TargetMap] | None = None, region: Region | None = None,
                           detection: Detection | None = None) -> Job:
        """Queue an explanation as an asynchronous job on the model's worker (in short steps between live batches);
        ``finish(maps)`` renders its result in the I/O pool once the maps are computed (``ready``: already known,
        e.g. cached — the job is then done at its first slice)."""
        if ready is not None:
            return self.jobs.submit(self.batcher(model), ReadyWork(ready), kind=kind, model=model.name, meta=meta,
                                    finish=finish)
        work = ExplainWork(inputs, method, tuple(sorted(params.items())), layer, tuple(targets), top_k, min_probability,
                           region, model.spec.activation, detection)
        chunk = self.job_chunk(model)
        steps = StepsWork(lambda: explain_steps(model, [work], chunk=chunk))
        return self.jobs.submit(self.batcher(model), steps, kind=kind, model=model.name, meta=meta,
                                finish=lambda explained: finish(split_results(explained, 1)[0]))

    async def predict(self, model: LoadedModel, inputs: Any, *, timeout: float | None = None) -> PredictResult:
        work = PredictWork(inputs, batch_key=predict_key(inputs))
        return await self.batcher(model).run(work.batch_key, work, timeout=timeout or self.settings.request_timeout)

