"""Read checkpoint files without copying them, and put their tensors into meta-initialised models.

Memory rule: a 14B model never exists twice in RAM. Files are memory-mapped (safetensors always,
`.pth` through `torch.load(mmap=True)`), models are built on the meta device, and each tensor is
assigned into place (`load_state_dict(assign=True)`); a tensor is copied only when its dtype has
to change, one tensor at a time. Mapped pages belong to the page cache (clean, reclaimable).
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

from wanserve.variants import ModelFolderError

log = logging.getLogger("wanserve.checkpoints")

StateDict = dict[str, torch.Tensor]


class CheckpointKeyError(ModelFolderError):
    """A checkpoint's keys do not account for a model exactly (an unused key or a missing weight)."""


def _names(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def open_safetensors(paths: Iterable[Path]) -> StateDict:
    """Every tensor of the safetensors file(s), memory-mapped (no copy, read lazily)."""
    from safetensors import safe_open

    tensors: StateDict = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if key in tensors:
                        raise ModelFolderError(f"{path}: tensor {key!r} is also in another shard")
                    tensors[key] = f.get_tensor(key)
        except ModelFolderError:
            raise
        except Exception as e:  # safetensors raises its own SafetensorError for corrupt files
            raise ModelFolderError(f"{path} is not a readable safetensors file: {e}") from e
    return tensors


def open_pth(path: Path) -> StateDict:
    """A `.pth` state dict, memory-mapped (`torch.load(mmap=True, weights_only=True)`).

    Only files in torch's zip format can be mapped; an old-format (pre-1.6 tar) file is read whole,
    with a warning, since no official Wan file of that format holds a large model."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        else:
            log.warning("%s is in torch's legacy format: read whole, not memory-mapped", path)
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFolderError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    if not isinstance(state, Mapping):
        raise ModelFolderError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFolderError(f"{path} is not a plain state dict: {_names(map(str, bad))} are not tensors")
    return dict(state)


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with parameters on the meta device (buffers stay real: rope tables, position ids)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def _keep_fp32(name: str, modules: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(m in parts for m in modules)


def fp32_modules(model: torch.nn.Module, dtype: torch.dtype | None) -> tuple[str, ...]:
    """The modules the library itself keeps in fp32 at `dtype` (so both load routes agree)."""
    cls = type(model)
    keep: list[str] = []
    if dtype == torch.float16:
        keep += list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    if dtype in (torch.float16, torch.bfloat16):
        keep += list(getattr(cls, "_keep_in_fp32_modules_strict", None) or [])
    return tuple(keep)


def rename_with(converter: Callable[[StateDict], StateDict], state: StateDict) -> tuple[StateDict, dict[str, str]]:
    """Run a key-renaming converter (e.g. diffusers' single-file ones) and remember each new key's
    official name, so that errors can name the key as it is in the user's file."""
    official = {id(t): k for k, t in state.items()}
    converted = converter(dict(state))
    return converted, {k: official[id(t)] for k, t in converted.items() if id(t) in official}


def assign_state_dict(model: torch.nn.Module, state: StateDict, what: str, dtype: torch.dtype | None,
                      aliases: Mapping[str, str] | None = None,
                      origin: Mapping[str, str] | None = None) -> torch.nn.Module:
    """Put `state` (already in the model's key names) into the meta-initialised `model`.

    Every model weight must come from `state` and every tensor of `state` must be used: otherwise a
    CheckpointKeyError names the keys (unused ones by their checkpoint name, through `origin`).
    `dtype` None keeps each tensor's stored dtype. `aliases` maps tied weights (absent from
    checkpoints) to the key they share."""
    aliases = dict(aliases or {})
    origin = dict(origin or {})
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in aliases}
    missing = expected.keys() - state.keys()
    unused = state.keys() - expected.keys()
    if missing or unused:
        parts = []
        if unused:
            parts.append(f"checkpoint keys it has no place for: {_names(origin.get(k, k) for k in unused)}")
        if missing:
            parts.append(f"weights the checkpoint lacks: {_names(missing)}")
        raise CheckpointKeyError(f"{what}: " + "; ".join(parts))
    keep = fp32_modules(model, dtype)
    ready: StateDict = {}
    for key, tensor in state.items():
        want = expected[key]
        if tuple(want.shape) != tuple(tensor.shape):
            raise CheckpointKeyError(
                f"{what}: {origin.get(key, key)} has shape {tuple(tensor.shape)} in the checkpoint, "
                f"the model needs {tuple(want.shape)} for {key}"
            )
        if tensor.is_floating_point():
            target = torch.float32 if _keep_fp32(key, keep) else (dtype or tensor.dtype)
            if tensor.dtype != target:
                tensor = tensor.to(target)  # one tensor at a time: the mapped original stays in the page cache
        ready[key] = tensor
    result = model.load_state_dict(ready, strict=False, assign=True)  # tied aliases are set just below
    leftover = (set(result.missing_keys) - aliases.keys()) | set(result.unexpected_keys)
    if leftover:
        raise CheckpointKeyError(f"{what}: could not place {_names(leftover)}")
    for alias, source in aliases.items():
        _set_tensor(model, alias, _get_tensor(model, source))
    still_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_meta:
        raise CheckpointKeyError(f"{what}: no weight for {_names(still_meta)}")
    return model


def _get_tensor(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    module_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module_name), attr)


def _set_tensor(model: torch.nn.Module, name: str, value: torch.nn.Parameter) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, value)


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks `prefix.N.` the state dict holds (0 when none)."""
    numbers = set()
    for key in state:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                numbers.add(int(head))
    if numbers and numbers != set(range(len(numbers))):
        gaps = sorted(set(range(max(numbers) + 1)) - numbers)
        raise CheckpointKeyError(f"blocks {prefix}N are not numbered 0..{max(numbers)}: {prefix}{gaps[0]} is missing")
    return len(numbers)


def need(state: Mapping[str, torch.Tensor], key: str, file: Path) -> torch.Tensor:
    """A tensor the loader reads a size from, or an error naming it and the file."""
    try:
        return state[key]
    except KeyError:
        raise CheckpointKeyError(f"{file} has no {key!r}: it is not the checkpoint this file name promises") from None
