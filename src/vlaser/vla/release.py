"""The released Vlaser-VLA checkpoint (open-pi-zero's ``step{N}.pt``) as a vlaser policy.

The release (V: ``Vlaser_VLA/Simpler/src/agent/train.py``, ``save_training``) saves ``{"model":
PiZero.state_dict(), ...}``. ``PiZero`` (``src/model/vla/pizero_internvl.py``) re-homes InternVL's modules, so one
tensor can appear under several names (a shared module is saved under each path): the table below maps every
name to the place vlaser keeps it, the first name of each place being its primary one, and the aliases must hold
the same tensor. Names nothing maps are an error; so is a place no name fills. The key table and what each
release module does are in docs/vla.md.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from vlaser.errors import UserInputError
from vlaser.vla.config import VLAConfig

log = logging.getLogger(__name__)

#: torch.compile's wrapper prefix, which the release strips when it loads a checkpoint (``load_checkpoint``).
COMPILED_PREFIX = "_orig_mod."
VLM, EXPERT = "vlm", "expert"
#: ``(release prefix, part, vlaser prefix)``: ``vlm`` names are the original InternVLChatModel layout, ``expert``
#: names are ``ActionExpert``'s. For each (part, vlaser prefix), the first row is the primary release name.
KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    ("vision_tower.vision_model.", VLM, "vision_model."),  # PiZero.vision_tower.vision_model = InternViT
    ("internvl_model.vision_model.", VLM, "vision_model."),
    ("multi_modal_projector.", VLM, "mlp1."),  # PiZero.multi_modal_projector = internvl_model.mlp1
    ("internvl_model.mlp1.", VLM, "mlp1."),  # kept only under the release's DEBUG_JOINT/DEBUG_VLM
    ("embed_tokens.", VLM, "language_model.model.embed_tokens."),
    ("internvl_model.language_model.model.embed_tokens.", VLM, "language_model.model.embed_tokens."),
    ("joint_model.mixtures.vlm.layers.", VLM, "language_model.model.layers."),
    ("joint_model.mixtures.vlm.norm.", VLM, "language_model.model.norm."),
    ("internvl_model.language_model.model.norm.", VLM, "language_model.model.norm."),
    ("internvl_model.language_model.lm_head.", VLM, "language_model.lm_head."),
    ("lm_head.", VLM, "language_model.lm_head."),  # PiZero.lm_head, only with use_lm_head
    ("joint_model.mixtures.action.layers.", EXPERT, "layers."),  # proprio and action share the expert's layers
    ("joint_model.mixtures.proprio.layers.", EXPERT, "layers."),
    ("joint_model.mixtures.action.norm.", EXPERT, "norm."),
    ("joint_model.mixtures.proprio.norm.", EXPERT, "norm."),
    ("internvl_model.action_expert.model.norm.", EXPERT, "norm."),
    ("action_encoder.", EXPERT, "action_encoder."),
    ("proprio_encoder.", EXPERT, "proprio_encoder."),
    ("action_decoder.", EXPERT, "action_decoder."),
)
#: Release names with no use in the policy: the expert's ``Qwen2ForCausalLM`` keeps an LM head no code path reads.
DROPPED = ("internvl_model.action_expert.lm_head.",)


def _place(key: str) -> tuple[str, str] | None:
    """``(part, vlaser name)`` of a release name; ``None`` when the table does not know it."""
    for prefix, part, target in KEY_TABLE:
        if key.startswith(prefix):
            return part, target + key[len(prefix):]
    return None


def release_name(part: str, name: str) -> str:
    """The primary release name of a vlaser name (original-layout for the VLM, ``ActionExpert``'s for the expert)."""
    for prefix, p, target in KEY_TABLE:
        if p == part and name.startswith(target):
            return prefix + name[len(target):]
    raise KeyError(f"no release name for {part} tensor {name}")


def read_release_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``"model"`` state dict of a release ``step{N}.pt`` (tensors only, no code run), compile prefix stripped."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise UserInputError(f"{path}: cannot read a release checkpoint ({e})") from e
    state = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping):
        raise UserInputError(f"{path}: not a release checkpoint (expected a dict with a 'model' state dict)")
    return {(k[len(COMPILED_PREFIX):] if k.startswith(COMPILED_PREFIX) else k): v for k, v in state.items()}


def split_release_state(state: Mapping[str, torch.Tensor], where: str = "release checkpoint"
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(VLM tensors by original-layout name, expert tensors by ActionExpert name)``; unknown names and aliases
    that disagree with their primary name are errors naming them."""
    parts: dict[str, dict[str, torch.Tensor]] = {VLM: {}, EXPERT: {}}
    source: dict[tuple[str, str], str] = {}
    unknown, differing = [], []
    for key in sorted(state, key=lambda k: (_place(k) is None, k)):
        if key.startswith(DROPPED):
            continue
        place = _place(key)
        if place is None:
            unknown.append(key)
        elif place in source:
            if not torch.equal(parts[place[0]][place[1]], state[key]):
                differing.append(f"{key} != {source[place]}")
        else:
            parts[place[0]][place[1]], source[place] = state[key], key
    if unknown:
        raise UserInputError(f"{where}: {len(unknown)} tensor name(s) the release's PiZero does not have: "
                             f"{_first(unknown)}")
    if differing:
        raise UserInputError(f"{where}: tensors that the release shares differ: {_first(differing)}")
    return parts[VLM], parts[EXPERT]


def _first(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _problems(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], part: str
              ) -> tuple[list[str], list[str], list[str]]:
    """Missing, surplus and wrongly shaped tensors of one part, each by its release name."""
    missing = [release_name(part, k) for k in expected if k not in got]
    surplus = [release_name(part, k) for k in got if k not in expected]
    shapes = [f"{release_name(part, k)} {tuple(v.shape)} (the policy needs {tuple(expected[k].shape)})"
              for k, v in got.items() if k in expected and v.shape != expected[k].shape]
    return missing, surplus, shapes


def check_release_state(policy, vlm_original: Mapping[str, torch.Tensor], expert: Mapping[str, torch.Tensor],
                        where: str = "release checkpoint") -> None:
    """Every tensor the policy needs is there, nothing else, at the policy's shapes; errors name release names."""
    from vlaser.model.convert import hf_to_original_state_dict

    model = policy.model
    vlm_expected = hf_to_original_state_dict({k: v.to("meta") for k, v in model.vlm.state_dict().items()})
    found = [_problems(vlm_expected, vlm_original, VLM), _problems(model.expert.state_dict(), expert, EXPERT)]
    missing, surplus, shapes = (sorted(a + b) for a, b in zip(*found))
    if missing:
        raise UserInputError(f"{where}: missing {len(missing)} tensor(s): {_first(missing)}")
    if surplus:
        raise UserInputError(f"{where}: {len(surplus)} tensor(s) with no place in the policy (check the preset's "
                             f"sizes): {_first(surplus)}")
    if shapes:
        raise UserInputError(f"{where}: shapes differ from the policy's (preset or --config: proprio_dim, action_dim, "
                             f"expert sizes, num_action_tokens_added; the VLM's image size): {_first(shapes)}")


def load_release_state(policy, state: Mapping[str, torch.Tensor], where: str = "release checkpoint") -> None:
    """Copy a release state dict into ``policy`` (a ``VLAPolicy`` built with the matching config), exactly."""
    from vlaser.model.convert import original_to_hf_state_dict

    vlm_original, expert = split_release_state(state, where)
    check_release_state(policy, vlm_original, expert, where)
    model = policy.model
    with torch.no_grad():
        for module, tensors in ((model.vlm, original_to_hf_state_dict(vlm_original)), (model.expert, expert)):
            targets = module.state_dict(keep_vars=True)
            for key, value in tensors.items():
                targets[key].copy_(value.to(targets[key].dtype))


def release_norm_stats(path: str | os.PathLike) -> dict:
    """``norm_stats.json`` from the release's dataset statistics (``config/bridge_statistics.json``, ...): its
    p01/p99 bounds of ``proprio`` and ``action``, the action's gripper passed through, as the release's adapter
    does (V: ``src/agent/env_adapter/simpler.py``)."""
    from vlaser.vla.data import Normalizer

    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        stats = {new: {"q01": raw[old]["p01"], "q99": raw[old]["p99"]}
                 for old, new in (("proprio", "observation.state"), ("action", "action"))}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserInputError(f"{path}: not the release's dataset statistics (proprio/action p01, p99): {e}") from e
    return Normalizer(stats, mode="quantile").to_json()


def convert_release(checkpoint: str | os.PathLike, vlm: str | os.PathLike, config: VLAConfig,
                    out: str | os.PathLike, stats: str | os.PathLike | None = None, dtype: str = "float32") -> Path:
    """Write the policy a release ``step{N}.pt`` holds: the VLM's config and tokenizer from ``vlm`` (the
    InternVL3 checkpoint the release started from), every weight from the checkpoint."""
    from vlaser.vla.policy import VLAPolicy

    state = read_release_state(checkpoint)
    policy = VLAPolicy.from_vlm(vlm, config, dtype=dtype)
    load_release_state(policy, state, where=str(checkpoint))
    norm_stats = None if stats is None else release_norm_stats(stats)
    out = policy.save_pretrained(out, norm_stats=norm_stats)
    log.info("converted %s (%d tensors) to the policy %s", checkpoint, len(state), out)
    return out
