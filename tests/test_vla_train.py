"""``train_vla`` on a tiny LeRobot dataset: the two learning rates, the loss going down, an exact reload of the
saved policy, resuming from a checkpoint, frozen parts and bad configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from vlaser.errors import UserInputError
from vlaser.vla.data import LeRobotDataset, Normalizer
from vlaser.vla.env import ReachEnv, heldout_seeds, write_demonstrations
from vlaser.vla.policy import VLAPolicy
from vlaser.vla.train import EXPERT_PREFIX, VLATrainArguments, VLATrainer, train_vla

CONFIG = {"proprio_dim": 2, "action_dim": 2}  # the tiny preset (56 px) with the reach task's shapes


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return write_demonstrations(tmp_path_factory.mktemp("vla-train") / "demos", 8, seed=3)


def _args(tiny_original, demos, out, **overrides) -> dict:
    args = {"vlm": str(tiny_original), "output_dir": str(out), "dataset": str(demos), "preset": "tiny",
            "config": CONFIG, "gripper_dims": {}, "learning_rate": 1e-3, "expert_learning_rate": 3e-3,
            "warmup_steps": 0, "lr_scheduler_type": "constant", "max_steps": 6, "per_device_train_batch_size": 4,
            "logging_steps": 1, "save_steps": 1000, "disable_tqdm": True}
    return {**args, **overrides}


class Record(TrainerCallback):
    """The logged losses, the optimiser's groups at the end, and the trained model itself."""

    def __init__(self) -> None:
        self.losses, self.groups, self.model = [], [], None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model = model
        self.groups = [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]


def test_optimizer_groups_backbone_and_expert_rates(tiny_original, demos, tmp_path):
    args = VLATrainArguments.from_dict(_args(tiny_original, demos, tmp_path / "out", freeze_vision=True))
    policy = VLAPolicy.from_vlm(tiny_original, args.vla_config())
    for p in policy.model.vlm.model.vision_tower.parameters():
        p.requires_grad = False
    trainer = VLATrainer(model=policy.model, args=args, expert_learning_rate=3e-3)  # TrainingArguments
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(policy.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert {n for n, p in named.items() if id(p) in lr_of} == trainable  # every trainable one, once
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    for name in trainable:
        assert lr_of[id(named[name])] == (3e-3 if name.startswith(EXPERT_PREFIX) else 1e-3), name
    assert any(n.startswith(EXPERT_PREFIX) for n in trainable) and any(n.startswith("vlm.") for n in trainable)
    assert not any(n.startswith("vlm.model.vision_tower") for n in trainable)


@pytest.mark.slow
def test_train_saves_a_policy_that_reloads_exactly(tiny_original, demos, tmp_path):
    record = Record()
    out = train_vla(_args(tiny_original, demos, tmp_path / "out", max_steps=30), callbacks=[record])
    assert len(record.losses) == 30 and all(math.isfinite(x) for x in record.losses)
    assert np.mean(record.losses[-10:]) < np.mean(record.losses[:10])
    # two learning rates at the end of a constant schedule: the expert's and the backbone's
    expert_ids = {id(p) for n, p in record.model.named_parameters() if n.startswith(EXPERT_PREFIX)}
    assert sorted({lr for lr, _ in record.groups}) == [1e-3, 3e-3]
    for lr, ids in record.groups:
        assert (ids <= expert_ids) if lr == 3e-3 else not (ids & expert_ids)

    loaded = VLAPolicy.from_pretrained(out)
    want = record.model.state_dict()
    got = loaded.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    data = LeRobotDataset(demos)
    assert loaded.norm_stats == json.loads(json.dumps(Normalizer(data.stats, gripper_dims={}).to_json()))
    live = VLAPolicy(record.model, loaded.tokenizer, loaded.normalizer)
    record.model.eval()
    obs = ReachEnv.from_seed(heldout_seeds(1, 3)[0]).observation()
    noise = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    a = loaded.predict_normalized(obs["image"], np.array([0.1, -0.2]), obs["instruction"], noise=noise)
    b = live.predict_normalized(obs["image"], np.array([0.1, -0.2]), obs["instruction"], noise=noise)
    assert a.shape == (4, 2) and np.array_equal(a, b)
    raw = loaded.predict(obs["image"], obs["state"], obs["instruction"], noise=noise)
    assert np.array_equal(raw, live.predict(obs["image"], obs["state"], obs["instruction"], noise=noise))


@pytest.mark.slow
def test_resume_from_a_checkpoint_continues_the_same_run(tiny_original, demos, tmp_path):
    straight = Record()
    train_vla(_args(tiny_original, demos, tmp_path / "straight", save_steps=3), callbacks=[straight])
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / "trainer_state.json").is_file()
    resumed = Record()
    train_vla(_args(tiny_original, demos, tmp_path / "resumed", resume_from_checkpoint=str(checkpoint)),
              callbacks=[resumed])
    assert len(resumed.losses) == 3  # steps 4-6 only
    assert resumed.losses == pytest.approx(straight.losses[3:], abs=1e-6)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_frozen_backbone_keeps_its_weights(tiny_original, demos, tmp_path):
    record = Record()
    out = train_vla(_args(tiny_original, demos, tmp_path / "out", max_steps=2, freeze_vlm=True), callbacks=[record])
    before = VLAPolicy.from_vlm(tiny_original, VLATrainArguments.from_dict(_args(tiny_original, demos, out))
                                .vla_config()).model.vlm.state_dict()
    after = VLAPolicy.from_pretrained(out).model
    assert all(torch.equal(before[k], v) for k, v in after.vlm.state_dict().items())
    assert sorted({lr for lr, _ in record.groups}) == [3e-3]  # the expert only


def test_bad_configs_are_named(tiny_original, demos, tmp_path):
    with pytest.raises(UserInputError, match="unknown keys"):
        VLATrainArguments.from_dict({"vlm": "x", "output_dir": "y", "learnin_rate": 1.0})
    with pytest.raises(UserInputError, match="vla.yaml: missing output_dir"):
        VLATrainArguments.from_dict({"vlm": "x"}, where="vla.yaml")
    with pytest.raises(UserInputError, match="no training data"):
        train_vla({**_args(tiny_original, demos, tmp_path / "out"), "dataset": None})
    with pytest.raises(UserInputError, match="normalisation mode"):
        train_vla(_args(tiny_original, demos, tmp_path / "out2", normalization="minmax"))


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory):
    """Two episodes of the reach task seen by two cameras (the second a mirrored copy), as image features."""
    from vlaser.vla.data import Episode, write_dataset
    from vlaser.vla.env import CAMERA, FEATURES, demonstration

    episodes = []
    for seed in (0, 1):
        episode = demonstration(seed)
        features = {**episode.features, "observation.images.wrist": episode.features[CAMERA][:, :, ::-1].copy()}
        episodes.append(Episode(episode.task, features))
    features = {**FEATURES, "observation.images.wrist": FEATURES[CAMERA]}
    return write_dataset(tmp_path_factory.mktemp("vla-2cam") / "demos", episodes, 10, features, camera_dtype="image")


def _no_weights(monkeypatch) -> None:
    """The checks must come before the weights: loading any fails the test."""
    import vlaser.vla.policy

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the config was checked")

    monkeypatch.setattr(vlaser.vla.policy, "load_model", refuse)


def test_a_config_that_disagrees_with_backbone_or_dataset_is_named_before_loading(tiny_original, demos,
                                                                                  two_cameras, tmp_path, monkeypatch):
    _no_weights(monkeypatch)
    base = _args(tiny_original, demos, tmp_path / "out")
    cases = [
        ({"config": {**CONFIG, "image_size": 448}}, "image_size=448 but the backbone .* has 56 px tiles: leave "
                                                    "image_size out"),
        ({"config": {"proprio_dim": 7, "action_dim": 2}}, r"observation.state has shape \[2\] but the VLA config says "
                                                          r"proprio_dim=7: set config: \{proprio_dim: 2\}"),
        ({"config": {"proprio_dim": 2, "action_dim": 3}}, r"set config: \{action_dim: 2\}"),
        ({"dataset": str(two_cameras)}, r"prefix_len=64 is too short: 2 camera\(s\) of 4 image tokens .* make a "
                                        r"\d+-token prompt; set config: \{prefix_len: \d+\}"),
    ]
    for change, message in cases:
        with pytest.raises(UserInputError, match=message):
            train_vla({**base, **change})


def test_the_image_size_comes_from_the_backbone_and_the_cameras_are_recorded(tiny_original, two_cameras, tmp_path):
    from vlaser.vla.checks import read_backbone

    assert (read_backbone(tiny_original).image_size, read_backbone(tiny_original).image_tokens) == (56, 4)
    out = train_vla(_args(tiny_original, two_cameras, tmp_path / "out", max_steps=1,
                          config={**CONFIG, "prefix_len": 128}))
    policy = VLAPolicy.from_pretrained(out)
    assert policy.config.image_size == 56
    assert policy.config.cameras == {"observation.images.top": [112, 112], "observation.images.wrist": [112, 112]}
