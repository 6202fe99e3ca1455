"""Every shipped recipe and DeepSpeed config parses and says what its source says."""

import json
from pathlib import Path

import pytest

from vlaser.train.args import parse_args

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _ci_overrides(tmp_path):
    # No DeepSpeed and no bf16-capable device in CI: --deepspeed "" and --use_cpu True make the values parseable.
    return ["--deepspeed", "", "--output_dir", str(tmp_path), "--use_cpu", "True"]


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipe_parses(name, tmp_path):
    model, data, train = parse_args([str(RECIPES / name), *_ci_overrides(tmp_path)])
    assert data.conv_style == "internvl2_5" and data.max_seq_length == 16384 and data.max_dynamic_patch == 12
    assert train.learning_rate == 2e-5 and train.weight_decay == 0.05 and train.lr_scheduler_type == "cosine"
    assert train.bf16 and train.train_sampling_strategy == "group_by_length"
    assert model.model_name_or_path.startswith("OpenGVLab/InternVL3-")
    if "paper" in name:
        assert not model.freeze_backbone and train.max_steps == 5000 and train.warmup_steps == 150
        assert train.gradient_accumulation_steps == 2
    else:
        assert model.freeze_backbone and train.warmup_steps == 0.03 and train.gradient_accumulation_steps == 4


def test_recipe_values_can_be_overridden(tmp_path):
    _, _, train = parse_args([str(RECIPES / "vlaser_2b_sft.yaml"), *_ci_overrides(tmp_path), "--learning_rate", "1e-5"])
    assert train.learning_rate == 1e-5


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_configs_leave_sizes_to_the_trainer(stage):
    config = json.loads((RECIPES / "deepspeed" / f"zero_stage{stage}_config.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["optimizer"]["params"]["lr"] == "auto"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_configs_pass_the_engine_schema(stage, loaded, tmp_path):
    """transformers fills the "auto" values; DeepSpeed's own pydantic schema then checks every key."""
    pytest.importorskip("deepspeed", reason="install with: pip install --no-build-isolation deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    model, _ = loaded
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4,
                             gradient_accumulation_steps=4, learning_rate=2e-5, weight_decay=0.05)
    hf = HfTrainerDeepSpeedConfig(str(RECIPES / "deepspeed" / f"zero_stage{stage}_config.json"))
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, model, num_training_steps=100)
    config = DeepSpeedConfig(hf.config)
    assert config.zero_optimization_stage == stage and config.gradient_accumulation_steps == 4
    hf.config["zero_optimization"]["stagee"] = stage  # a typo must not pass
    with pytest.raises(Exception, match="stagee"):
        DeepSpeedConfig(hf.config)
