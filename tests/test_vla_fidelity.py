"""The release's training choices as settings (cameras, Octo's image augmentation, padded chunk steps, frozen text
embeddings, the time-embedding period) with the release's values in the recipes, and the Octo data conventions
that ``vlaser vla data`` checks where a dataset says its robot."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlaser.cli import main
from vlaser.errors import UserInputError
from vlaser.train.args import read_config
from vlaser.vla.config import preset
from vlaser.vla.data import ActionChunkDataset, Episode, LeRobotDataset, Normalizer, inspect_dataset, write_dataset
from vlaser.vla.data.augment import AugmentParams, ImageAugmentation, apply, crop_resize
from vlaser.vla.policy import VLAPolicy
from vlaser.vla.train import VLATrainArguments, _dataset, train_vla

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "vla"
SIZE = 32
TOP, WRIST = "observation.images.top", "observation.images.wrist"
IDENTITY = AugmentParams(box=(0.0, 0.0, 1.0, 1.0), brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0)


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _dataset_dir(root: Path, robot_type: str, gripper: list[np.ndarray], state_dim: int = 7) -> Path:
    """Episodes with two cameras, a ``state_dim`` proprio and a 7-D action whose last value is ``gripper``."""
    features = {"observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
                "action": {"dtype": "float32", "shape": [7], "names": None},
                TOP: {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]},
                WRIST: {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}}
    rng = np.random.default_rng(0)
    episodes = []
    for e, grip in enumerate(gripper):
        n = len(grip)
        action = np.concatenate([rng.normal(size=(n, 6)), np.asarray(grip)[:, None]], axis=1).astype(np.float32)
        frames = np.stack([_frame(10 * e + t) for t in range(n)])
        episodes.append(Episode(task="put the spoon on the towel", features={
            "observation.state": rng.normal(size=(n, state_dim)).astype(np.float32), "action": action,
            TOP: frames, WRIST: frames[:, ::-1].copy()}))
    return write_dataset(root, episodes, 5, features, robot_type=robot_type)


# ---- Octo's image augmentation -----------------------------------------------------------------------------

def test_identity_parameters_leave_the_frame_exactly():
    frame = _frame()
    assert np.array_equal(apply(frame, IDENTITY), frame)


def test_colour_ops_follow_tf_image_formulas():
    frame = _frame(1)
    x = frame.astype(np.float64) / 255
    bright = apply(frame, AugmentParams((0, 0, 1, 1), 0.1, 1.0, 1.0, 0.0))
    assert np.array_equal(bright, (np.clip(x + 0.1, 0, 1) * 255.5).astype(np.uint8))
    contrast = apply(frame, AugmentParams((0, 0, 1, 1), 0.0, 1.1, 1.0, 0.0))
    mean = x.mean(axis=(0, 1), keepdims=True)
    want = (np.clip((x - mean) * 1.1 + mean, 0, 1) * 255.5).astype(np.uint8)
    assert np.abs(contrast.astype(int) - want).max() <= 1
    for factor, shift in ((0.9, 0.0), (1.0, 0.05), (1.0, -0.05)):
        got = apply(frame, AugmentParams((0, 0, 1, 1), 0.0, 1.0, factor, shift))
        want = np.empty_like(frame)
        for i, j in np.ndindex(*x.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*x[i, j])
            want[i, j] = (np.clip(colorsys.hsv_to_rgb((h + shift) % 1.0, min(s * factor, 1.0), v), 0, 1)
                          * 255.5).astype(np.uint8)
        assert np.abs(got.astype(int) - want).max() <= 1, (factor, shift)
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    green = apply(red, AugmentParams((0, 0, 1, 1), 0.0, 1.0, 1.0, 1 / 3))
    assert green[..., 1].min() == 255 and green[..., [0, 2]].max() == 0


def test_crop_samples_the_box_bilinearly_from_corner_to_corner():
    """tf.image.crop_and_resize: output j of n samples the source at left + j * width * (W - 1) / (n - 1)."""
    ramp = torch.arange(SIZE, dtype=torch.float32).expand(3, SIZE, SIZE) / (SIZE - 1)
    out = crop_resize(ramp, (0.0, 0.25, 1.0, 0.5))
    want = (0.25 * (SIZE - 1) + torch.arange(SIZE) * 0.5 * (SIZE - 1) / (SIZE - 1)) / (SIZE - 1)
    assert torch.allclose(out[0, 5], want, atol=1e-6)


def test_draws_stay_in_the_release_ranges():
    aug = ImageAugmentation()
    gen = torch.Generator().manual_seed(0)
    draws = [aug.sample(gen) for _ in range(500)]
    for p in draws:
        top, left, h, w = p.box
        assert 0.8 - 1e-9 <= h * w <= 1.0 and 0.9 - 1e-9 <= w / h <= 1.1 + 1e-9
        assert 0 <= top <= 1 - h + 1e-12 and 0 <= left <= 1 - w + 1e-12
        assert abs(p.brightness) <= 0.1 and 0.9 <= p.contrast <= 1.1 and 0.9 <= p.saturation <= 1.1
        assert abs(p.hue) <= 0.05
    assert len({p.box for p in draws}) == 500
    a = aug(Image.fromarray(_frame()), torch.Generator().manual_seed(4))
    b = aug(Image.fromarray(_frame()), torch.Generator().manual_seed(4))
    assert a.size == (SIZE, SIZE) and np.array_equal(np.asarray(a), np.asarray(b))


# ---- training samples: cameras, augmentation, padded chunk steps ---------------------------------------------

@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    gripper = [np.array([1, 1, 0, 0, 0], dtype=float), np.array([0, 0, 1], dtype=float)]
    return _dataset_dir(tmp_path_factory.mktemp("bridge") / "ds", "widowx", gripper)


def test_padded_chunk_steps_are_masked_or_trained_on_the_repeated_action(bridge):
    data = LeRobotDataset(bridge)
    norm = Normalizer(data.stats)
    masked = ActionChunkDataset(data, 4, norm)
    repeated = ActionChunkDataset(data, 4, norm, padded_actions="repeat")
    last = len(masked) - 1  # the last frame of the last episode: 3 of its 4 steps are padding
    assert masked[last]["action_mask"].tolist() == [True, False, False, False]
    assert repeated[last]["action_mask"].tolist() == [True, True, True, True]
    assert torch.equal(masked[last]["actions"], repeated[last]["actions"])
    assert torch.equal(repeated[last]["actions"][1:], repeated[last]["actions"][:1].expand(3, -1))
    with pytest.raises(UserInputError, match="padded_actions must be one of"):
        ActionChunkDataset(data, 4, norm, padded_actions="drop")


def test_release_loss_on_repeated_steps_is_the_plain_mean(tiny_original):
    """With every step kept, the loss is the release's ``torch.mean((v - target) ** 2)`` over the whole chunk."""
    policy = VLAPolicy.from_vlm(tiny_original, preset("tiny", proprio_dim=7, action_dim=7))
    items = [{"images": [Image.fromarray(_frame(i))], "state": torch.rand(7), "actions": torch.rand(4, 7),
              "action_mask": torch.tensor([True, True, False, False]), "task": "pick"} for i in range(2)]
    batch = policy.collator(items)
    noise, time = torch.randn(2, 4, 7), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        masked = policy.model(**batch, noise=noise, time=time)
        kept = policy.model(**{**batch, "action_mask": torch.ones(2, 4, dtype=torch.bool)}, noise=noise, time=time)
    from vlaser.vla import flow

    target = flow.velocity_target(noise, batch["actions"], "release", 0.001)
    assert abs(kept.loss.item() - torch.mean((kept.velocity - target) ** 2).item()) <= 1e-6
    assert abs(masked.loss.item() - kept.loss.item()) > 1e-4


def _args(tiny_original, dataset, out, **overrides) -> VLATrainArguments:
    values = {"vlm": str(tiny_original), "output_dir": str(out), "dataset": str(dataset), "preset": "tiny",
              "config": {"proprio_dim": 7, "action_dim": 7}, "learning_rate": 1e-2, "expert_learning_rate": 1e-2,
              "warmup_steps": 0, "lr_scheduler_type": "constant", "max_steps": 2, "per_device_train_batch_size": 4,
              "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True}
    return VLATrainArguments.from_dict({**values, **overrides})


def test_training_data_takes_the_release_settings(tiny_original, bridge, tmp_path):
    default, _ = _dataset(_args(tiny_original, bridge, tmp_path), preset("tiny"))
    assert default.cameras == [TOP, WRIST] and default.augment is None and default.padded_actions == "mask"
    plain = np.asarray(default[0]["images"][0])
    assert np.array_equal(plain, LeRobotDataset(bridge).camera_frame(0, 0, TOP))
    release, _ = _dataset(_args(tiny_original, bridge, tmp_path, cameras=[TOP], augment_images=True,
                                padded_actions="repeat"), preset("tiny"))
    item = release[len(release) - 1]
    assert len(item["images"]) == 1 and bool(item["action_mask"].all())
    assert not np.array_equal(np.asarray(release[0]["images"][0]), plain)  # augmented
    from_flag, _ = _dataset(_args(tiny_original, bridge, tmp_path, cameras=f"{WRIST},{TOP}"), preset("tiny"))
    assert from_flag.cameras == [WRIST, TOP]


def test_frozen_text_embeddings_keep_their_weights(tiny_original, bridge, tmp_path):
    out = train_vla(_args(tiny_original, bridge, tmp_path / "out", freeze_text_embeddings=True, cameras=[TOP],
                          augment_images=True, padded_actions="repeat"))
    before = VLAPolicy.from_vlm(tiny_original, _args(tiny_original, bridge, out).vla_config()).model.vlm
    after = VLAPolicy.from_pretrained(out).model.vlm
    assert torch.equal(before.get_input_embeddings().weight, after.get_input_embeddings().weight)
    layer = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(before.state_dict()[layer], after.state_dict()[layer])  # the rest of the VLM trains


# ---- presets and recipes ---------------------------------------------------------------------------------------

def test_release_presets_embed_time_with_period_100():
    for name in ("vlaser_2b_bridge", "vlaser_2b_fractal", "vlaser_8b_bridge"):
        assert preset(name).time_max_period == 100.0, name


@pytest.mark.parametrize("recipe, camera", [("vlaser_2b_bridge.yaml", "observation.images.image_0"),
                                            ("vlaser_2b_fractal.yaml", "observation.images.image")])
def test_recipes_select_the_release_values(recipe, camera):
    # they are TrainingArguments now: no bf16-capable device in CI, so use_cpu makes the values constructible
    args = VLATrainArguments.from_dict({**read_config(RECIPES / recipe), "use_cpu": True}, where=recipe)
    assert args.cameras == [camera]
    assert (args.augment_images, args.padded_actions, args.freeze_text_embeddings) == (True, "repeat", True)
    assert args.vla_config().time_max_period == 100.0


# ---- Octo data conventions in `vlaser vla data` ---------------------------------------------------------------

def test_bridge_with_a_binarised_gripper_passes(bridge):
    summary = inspect_dataset(bridge)
    assert summary.conventions == {"robot": "bridge", "problems": []}
    assert "Octo conventions (bridge): ok" in summary.render()


def test_bridge_with_a_raw_gripper_is_named(tmp_path, capsys):
    root = _dataset_dir(tmp_path / "ds", "WidowX 250", [np.array([1.0, 0.53, 0.0]), np.array([0.97, 1.0])])
    summary = inspect_dataset(root)
    assert len(summary.conventions["problems"]) == 1
    assert "2 of 5 frames hold gripper values other than 0 and 1 (e.g. 0.53)" in summary.conventions["problems"][0]
    assert "binarize_gripper_actions" in summary.conventions["problems"][0]
    assert main(["vla", "data", str(root)]) == 0
    assert "WARNING: action: the gripper is not binarised" in capsys.readouterr().out


def test_fractal_with_a_relative_gripper_and_other_shapes_is_named(tmp_path):
    root = _dataset_dir(tmp_path / "ds", "google_robot", [np.array([0.0, 1.0, 0.0, -1.0])], state_dim=7)
    problems = inspect_dataset(root).conventions["problems"]
    assert problems[0] == "observation.state has 7 values; the release's fractal policy takes 8"
    assert "the gripper looks relative" in problems[1] and "rel2abs_gripper_actions" in problems[1]


def test_an_unnamed_robot_is_not_checked(tmp_path):
    root = _dataset_dir(tmp_path / "ds", "franka", [np.array([0.3, 0.7])])
    summary = inspect_dataset(root)
    assert summary.conventions == {"robot": None, "problems": []}
    assert "not checked (robot type 'franka'" in summary.render()
    assert json.loads(json.dumps(summary.as_dict()))["conventions"]["robot"] is None
