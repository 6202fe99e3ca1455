"""Reading checkpoint directories: which layout a directory holds, its config, and its tensors.

Loading into a model lives in ``loading.py``; key and config translation in ``convert.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vlaser.errors import UserInputError

ORIGINAL = "original"
HF = "hf"

_SAFE_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(UserInputError):
    """A directory is not a checkpoint vlaser can read; the message says what was found."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``config.json`` says a checkpoint directory holds."""

    path: Path
    layout: str  # ORIGINAL or HF
    config: dict

    @property
    def llm_config(self) -> dict:
        return self.config["llm_config"] if self.layout == ORIGINAL else self.config.get("text_config", {})

    @property
    def vision_config(self) -> dict:
        return self.config.get("vision_config", {})


def resolve_path(path: str | os.PathLike) -> Path:
    """A local directory as is; anything else is treated as a hub id and downloaded with huggingface_hub."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith((".", "/", "~")) or str(path).count("/") != 1:
        raise CheckpointError(f"checkpoint directory not found: {local}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path)))
    except Exception as e:  # no network, unknown repo, auth: all end here with the cause attached
        raise CheckpointError(f"{path!r} is not a local directory and could not be fetched from the hub: {e}") from e


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Read ``config.json`` and tell the original ``InternVLChatModel`` layout from transformers' ``internvl``."""
    path = resolve_path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json; expected an InternVL3/Vlaser checkpoint directory")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if "InternVLChatModel" in archs or model_type == "internvl_chat":
        if "llm_config" not in config or "vision_config" not in config:
            raise CheckpointError(f"{cfg_file} says InternVLChatModel but lacks llm_config/vision_config")
        layout = ORIGINAL
    elif model_type == "internvl" or "InternVLForConditionalGeneration" in archs:
        layout = HF
    else:
        raise CheckpointError(
            f"{cfg_file} has model_type={model_type!r}, architectures={archs}: neither the original InternVL "
            "layout (architectures ['InternVLChatModel']) nor transformers' (model_type 'internvl')"
        )
    info = CheckpointInfo(path=path, layout=layout, config=config)
    check_qwen2(info)
    return info


def check_qwen2(info: CheckpointInfo) -> None:
    """vlaser targets InternVL3's Qwen2-based language models; anything else is refused by name."""
    llm = info.llm_config
    archs = llm.get("architectures") or []
    model_type = llm.get("model_type", "qwen2" if info.layout == HF and not llm else None)
    if model_type != "qwen2" and "Qwen2ForCausalLM" not in archs:
        found = archs[0] if archs else model_type
        raise CheckpointError(
            f"{info.path}: the language model is {found!r}; vlaser supports Qwen2-based InternVL checkpoints "
            "(InternVL3-1B/2B/8B/14B/38B/78B and Vlaser-2B/8B), not InternLM2/Llama/Phi-3 ones"
        )


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint: sharded (via the index) or single, safetensors preferred to .bin."""
    for index_name, single in ((_SAFE_INDEX, "model.safetensors"), (_BIN_INDEX, "pytorch_model.bin")):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shard(s) that are missing: {missing}")
            return [path / s for s in shards]
        if (path / single).is_file():
            return [path / single]
    found = sorted(p.name for p in path.iterdir())
    raise CheckpointError(
        f"{path} has no model.safetensors(.index.json) or pytorch_model.bin(.index.json); found {found}"
    )


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint, memory-mapped for safetensors."""
    from safetensors import safe_open

    for file in weight_files(path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    yield key, f.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64", "I64": "int64",
                       "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def iter_shapes(path: Path) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` of every tensor, from safetensors headers (``.bin`` files are memory-mapped)."""
    from safetensors import safe_open

    for file in weight_files(path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    sl = f.get_slice(key)
                    yield key, tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype())
        else:
            for key, t in torch.load(file, map_location="cpu", weights_only=True, mmap=True).items():
                yield key, tuple(t.shape), str(t.dtype).replace("torch.", "")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(path):
        if key in state:
            raise CheckpointError(f"{path}: tensor {key!r} appears in more than one weight file")
        state[key] = tensor
    return state
