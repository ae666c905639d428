"""Build an ``nn.Module`` from a registry ``source`` string.

Sources:
- ``torchvision:<arch>`` — ``weights`` is ``none``, a local file (state dict: ``.safetensors`` or ``.pt``/``.pth``)
  or a torchvision weight-enum name (``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``, ``DEFAULT``). Enum
  weights are fetched by torchvision into its cache (``$TORCH_HOME``) on first use, so a machine without network
  access needs that cache pre-filled or a local weights file.
- ``torchscript:<path>`` — a ``torch.jit.save``-d module; ``weights`` must be absent. TorchScript is deprecated in
  torch 2.14; prefer:
- ``export:<path>.pt2`` — a ``torch.export.save``-d program (the successor of TorchScript), unflattened so that its
  layers can be hooked; ``weights`` must be absent.
- ``python:<module>:<factory>`` — ``factory(**args)`` returns the module; optional ``weights`` state-dict file.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing pickled code (safetensors, or ``torch.load(weights_only=True)``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} does not hold a state dict")
    return state


def weights_digest(source: str, module: nn.Module, base_dir: Path) -> str:
    """The identity of a model's weights, computed once at load: the TorchScript file's bytes, else the state dict."""
    kind, _, rest = source.partition(":")
    if kind in ("torchscript", "export"):  # the archive carries code and weights: both are the model
        return file_digest(resolve_path(rest, base_dir, "source"))
    return state_dict_digest(module)


def state_dict_digest(module: nn.Module) -> str:
    """sha256 over the module's state dict in key order: each tensor's name, dtype, shape and bytes.

    Names, dtypes and shapes go in too, so two layouts with equal bytes differ; buffers (BatchNorm statistics) count,
    since they change the outputs. Cost: one pass over the weights at load time, at hashlib's speed (0.08 s for
    resnet50's 98 MiB on one core), before the module moves to its device (no device-to-host copies)."""
    hasher = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach()
        hasher.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        hasher.update(_tensor_bytes(data))
    return hasher.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (a TorchScript archive carries code and weights: both are the model)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes | memoryview:
    """A tensor's raw bytes, whatever its dtype (bfloat16 has no NumPy type: reinterpreted as uint8)."""
    try:
        flat = tensor.cpu().contiguous().reshape(-1)
        return memoryview(flat.view(torch.uint8).numpy())
    except (RuntimeError, TypeError):  # quantized, sparse or otherwise unviewable: its serialised form
        buffer = io.BytesIO()
        torch.save(tensor.cpu(), buffer)
        return buffer.getvalue()


def build_module(source: str, weights: str | None, args: dict[str, Any], *, num_classes: int | None,
                 base_dir: Path) -> nn.Module:
    """Instantiate the module named by ``source``. Raises ``ConfigError`` with the field at fault."""
    kind, _, rest = source.partition(":")
    if not rest:
        raise ConfigError("field 'source': expected 'torchvision:<arch>', 'torchscript:<path>', 'export:<path>' or "
                          f"'python:<module>:<factory>', got {source!r}")
    if kind == "torchvision":
        return _torchvision(rest, weights, args, num_classes=num_classes, base_dir=base_dir)
    if kind == "torchscript":
        if weights:
            raise ConfigError("field 'weights': a torchscript source carries its own weights; remove 'weights'")
        path = resolve_path(rest, base_dir, "source")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any load failure is a config problem of this entry
            raise ConfigError(f"field 'source': cannot load TorchScript file {path}: {exc}") from None
    if kind == "export":
        if weights:
            raise ConfigError("field 'weights': an export source carries its own weights; remove 'weights'")
        return load_exported(resolve_path(rest, base_dir, "source"))
    if kind == "python":
        module_name, _, factory_name = rest.rpartition(":")
        if not module_name:
            raise ConfigError(f"field 'source': expected 'python:<module>:<factory>', got {source!r}")
        try:
            factory = getattr(importlib.import_module(module_name), factory_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"field 'source': cannot import {module_name}:{factory_name}: {exc}") from None
        try:
            module = factory(**args)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"field 'args': {module_name}:{factory_name}(**args) failed: {exc}") from None
        if not isinstance(module, nn.Module):
            raise ConfigError(f"field 'source': {module_name}:{factory_name} returned {type(module).__name__}, "
                              "not an nn.Module")
        if weights:
            _load_weights(module, resolve_path(weights, base_dir, "weights"))
        return module
    raise ConfigError(f"field 'source': unknown source kind {kind!r} (torchvision, torchscript, export, python)")


def load_exported(path: Path) -> nn.Module:
    """A ``torch.export``-ed program (``torch.export.save``, ``.pt2``) as a module: ``torch.export.unflatten`` keeps
    the original module hierarchy, so forward hooks on its submodules fire and CAM methods can use its layers.
    Export it in eval mode with a dynamic batch dimension (``dynamic_shapes={"x": {0: Dim.AUTO}}``) so that batches
    of any size run."""
    try:
        program = torch.export.load(str(path))
        return torch.export.unflatten(program)
    except Exception as exc:  # noqa: BLE001 - any load failure is a config problem of this entry
        raise ConfigError(f"field 'source': cannot load exported program {path}: {exc.__class__.__name__}: "
                          f"{str(exc)[:300]}") from None


def resolve_path(value: str, base_dir: Path, field: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"field '{field}': file not found: {path}")
    return path


def _torchvision(arch: str, weights: str | None, args: dict[str, Any], *, num_classes: int | None,
                 base_dir: Path) -> nn.Module:
    import torchvision.models as tvm

    if arch not in tvm.list_models():
        raise ConfigError(f"field 'source': torchvision has no model {arch!r}")
    if weights and weights.lower() != "none" and not _looks_like_path(weights):
        try:
            enum = tvm.get_model_weights(arch)
            weight = enum[weights.split(".")[-1]] if weights != "DEFAULT" else enum.DEFAULT
        except (KeyError, ValueError):
            raise ConfigError(f"field 'weights': {weights!r} is neither a file nor a weight of {arch} "
                              f"({', '.join(w.name for w in tvm.get_model_weights(arch))})") from None
        try:
            return tvm.get_model(arch, weights=weight, **args)
        except Exception as exc:  # noqa: BLE001 - typically no network access and an empty cache
            raise ConfigError(
                f"field 'weights': could not obtain {weight} ({exc.__class__.__name__}: {exc}); without network access "
                "put the file in the torch hub cache ($TORCH_HOME/hub/checkpoints) or give a local weights file"
            ) from None
    kwargs = dict(args)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if arch in tvm.list_models(module=tvm.detection) or arch in tvm.list_models(module=tvm.segmentation):
        # Their builders fetch an ImageNet backbone by default: a download at start-up, and a failure offline.
        # Weights of the whole model come from 'weights'; name a backbone in 'args' to start from one.
        kwargs.setdefault("weights_backbone", None)
    try:
        module = tvm.get_model(arch, weights=None, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"field 'args': torchvision {arch}(**{kwargs}) failed: {exc}") from None
    if weights and weights.lower() != "none":
        _load_weights(module, resolve_path(weights, base_dir, "weights"))
    return module


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".safetensors", ".bin"))


def _load_weights(module: nn.Module, path: Path) -> None:
    try:
        state = load_state_dict_file(path)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"field 'weights': cannot read {path}: {exc}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(f"field 'weights': {path.name} does not fit the architecture: "
                          f"{' '.join(first[:3])[:400]}") from None
