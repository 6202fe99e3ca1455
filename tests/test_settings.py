"""Processor settings travel with the checkpoint: training writes them, loading reads them, inference uses them."""

import dataclasses
import json
import logging
import shutil

import pytest
import torch
from PIL import Image

import vlaser
from vlaser import VLM
from vlaser.cli import main
from vlaser.data.config import DataConfig
from vlaser.inference import Completion
from vlaser.inference.engine import Engine
from vlaser.model.checkpoint import CheckpointError
from vlaser.model.convert import DEFAULT_CHAT_SETTINGS
from vlaser.model.settings import ProcessorSettings
from vlaser.model.tiny import tiny_original_config
from vlaser.train.args import DataTrainingArguments, parse_args

WIDE = (600, 100)  # aspect 6: a 6x1 grid with 12 tiles allowed, 4x1 with 4


def _with_settings(src, dst, **keys):
    """A copy of checkpoint ``src`` whose config carries ``keys`` where its layout keeps them."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (config if "llm_config" in config else config.setdefault("internvl_chat", {})).update(keys)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_defaults_are_internvl3s_released_config():
    defaults = ProcessorSettings()
    assert defaults.to_config() == {"force_image_size": 448, **{k: v for k, v in DEFAULT_CHAT_SETTINGS.items()
                                                                  if k != "ps_version"}}
    assert defaults.max_tiles == 12 and defaults.system_message is None
    assert ProcessorSettings.from_config({"vision_config": {"image_size": 448}}) == defaults


def test_reads_the_original_layout_top_level():
    config = tiny_original_config(100) | {"max_dynamic_patch": 4, "use_thumbnail": False, "min_dynamic_patch": 2,
                                          "force_image_size": None, "system_message": "Be brief."}
    settings = ProcessorSettings.from_config(config)
    assert settings == ProcessorSettings(image_size=56, min_dynamic_patch=2, max_dynamic_patch=4, use_thumbnail=False,
                                         system_message="Be brief.")  # null force_image_size: the tower's size
    assert ProcessorSettings.from_config(config | {"dynamic_image_size": False}).max_tiles == 1


def test_reads_vlasers_transformers_layout_and_prefers_internvl_chat():
    config = {"vision_config": {"image_size": [56, 56]}, "max_dynamic_patch": 9,
              "internvl_chat": {"max_dynamic_patch": 3, "use_thumbnail": False, "force_image_size": 56}}
    settings = ProcessorSettings.from_config(config)
    assert (settings.image_size, settings.max_dynamic_patch, settings.use_thumbnail) == (56, 3, False)
    top_level_only = {"vision_config": {"image_size": [56, 56]}, "max_dynamic_patch": 9}
    assert ProcessorSettings.from_config(top_level_only).max_dynamic_patch == 9


@pytest.mark.parametrize("key, value, message", [
    ("max_dynamic_patch", 0, "max_dynamic_patch must be an integer >= 1, got 0"),
    ("max_dynamic_patch", "6", "max_dynamic_patch must be an integer >= 1, got '6'"),
    ("min_dynamic_patch", True, "min_dynamic_patch must be an integer >= 1, got True"),
    ("min_dynamic_patch", 13, "min_dynamic_patch 13 is larger than max_dynamic_patch 12"),
    ("use_thumbnail", "yes", "use_thumbnail must be true or false, got 'yes'"),
    ("dynamic_image_size", 1, "dynamic_image_size must be true or false, got 1"),
    ("template", "chatml", "unknown conversation template 'chatml'"),
    ("force_image_size", 448, "force_image_size 448 differs from vision_config.image_size 56"),
])
def test_bad_values_name_the_file_and_the_key(key, value, message):
    with pytest.raises(CheckpointError, match="^ckpt/config.json: " + message):
        ProcessorSettings.from_config(tiny_original_config(100) | {key: value}, source="ckpt/config.json")


def test_non_square_tiles_are_refused():
    with pytest.raises(CheckpointError, match="image_size \\[448, 224\\] is not square"):
        ProcessorSettings.from_config({"vision_config": {"image_size": [448, 224]}})


def test_to_config_round_trips():
    settings = ProcessorSettings(image_size=56, min_dynamic_patch=2, max_dynamic_patch=5, use_thumbnail=False,
                                 dynamic=True, system_message="Hi")
    assert ProcessorSettings.from_config({"vision_config": {"image_size": 56}} | settings.to_config()) == settings


def test_loaded_model_carries_the_checkpoints_settings(tiny_original, tiny_hf, tmp_path):
    for layout, src in (("original", tiny_original), ("hf", tiny_hf)):
        ckpt = _with_settings(src, tmp_path / layout, max_dynamic_patch=4, use_thumbnail=False)
        model, _ = vlaser.load_model(ckpt, dtype=torch.float32, device="cpu")
        expected = ProcessorSettings(image_size=56, max_dynamic_patch=4, use_thumbnail=False)
        assert model.processor_settings == expected, layout


def test_load_refuses_bad_settings_naming_the_file(tiny_original, tmp_path):
    ckpt = _with_settings(tiny_original, tmp_path / "bad", max_dynamic_patch=-1)
    with pytest.raises(CheckpointError, match=f"{ckpt / 'config.json'}: max_dynamic_patch must be"):
        vlaser.load_model(ckpt, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def four_no_thumbnail(tiny_original, tmp_path_factory):
    ckpt = _with_settings(tiny_original, tmp_path_factory.mktemp("s") / "ckpt", max_dynamic_patch=4,
                          use_thumbnail=False)
    return VLM.from_pretrained(ckpt, dtype=torch.float32, device="cpu", max_new_tokens=3)


def test_vlm_tiles_with_the_checkpoints_settings(four_no_thumbnail):
    vlm, image = four_no_thumbnail, Image.new("RGB", WIDE, (200, 30, 30))
    assert vlm.max_tiles == 4
    media = vlm.media(image)
    assert media.num_patches == [4]  # 4x1, no thumbnail; InternVL's quick-start default would give 6 + 1
    assert torch.equal(media.pixel_values, vlaser.load_image(image, input_size=56, max_num=4, use_thumbnail=False))


def test_explicit_max_num_overrides_the_checkpoint(four_no_thumbnail):
    vlm, image = four_no_thumbnail, Image.new("RGB", WIDE, (200, 30, 30))
    assert vlm.media(image, max_tiles=6).num_patches == [6]  # still the checkpoint's: no thumbnail
    assert VLM(vlm.model, vlm.tokenizer, max_tiles=2).media(image).num_patches == [2]
    seen = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Engine, "generate", lambda engine, items, params: (
            seen.setdefault("tiles", items[0].pixel_values.shape[0]), [Completion("")])[1])
        vlm.point(image, "Point.")
    assert seen["tiles"] == 6  # the point protocol keeps its 6 tiles


def test_dynamic_tiling_off_means_one_tile_unless_asked(tiny_original, tmp_path):
    ckpt = _with_settings(tiny_original, tmp_path / "one", dynamic_image_size=False)
    vlm, image = VLM.from_pretrained(ckpt, dtype=torch.float32, device="cpu"), Image.new("RGB", WIDE)
    assert vlm.max_tiles == 1 and vlm.media(image).num_patches == [1]
    assert vlm.media(image, max_tiles=4).num_patches == [5]  # asked for: 4x1 plus the checkpoint's thumbnail


def test_media_logs_how_each_image_was_cut(four_no_thumbnail, loaded, tmp_path, caplog):
    path = tmp_path / "a.png"
    Image.new("RGB", WIDE, (0, 0, 0)).save(path)
    with caplog.at_level(logging.INFO, logger="vlaser.api"):
        four_no_thumbnail.media([path, Image.new("RGB", (56, 56))])
        VLM(*loaded).media(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"image {path}: 600x100 -> 4 tiles (max_num 4)", "image 2: 56x56 -> 1 tile (max_num 4)",
        f"image {path}: 600x100 -> 6 tiles + thumbnail (max_num 12)"]


def test_verbose_chat_logs_the_tiles(tiny_original, tmp_path, caplog):
    path = tmp_path / "a.png"
    Image.new("RGB", (90, 60), (255, 0, 0)).save(path)
    with caplog.at_level(logging.INFO):
        assert main(["-v", "chat", "--model", str(tiny_original), "--image", str(path), "--max-new-tokens", "2",
                     "--max-num", "6", "What?"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert f"image {path}: 90x60 -> 6 tiles + thumbnail (max_num 6)" in messages
    assert any(m.startswith("processor settings: 56 px, 1-12 tiles per image, with thumbnail") for m in messages)


def test_info_prints_the_settings(tiny_original, tmp_path, capsys):
    ckpt = _with_settings(tiny_original, tmp_path / "c", max_dynamic_patch=4, use_thumbnail=False)
    assert main(["info", str(ckpt)]) == 0
    assert "processor: 56 px, 1-4 tiles per image, without thumbnail; template internvl2_5" in capsys.readouterr().out
    assert main(["info", str(ckpt), "--json"]) == 0
    processor = json.loads(capsys.readouterr().out)["processor"]
    assert processor["max_dynamic_patch"] == 4 and processor["use_thumbnail"] is False


def test_training_flags_and_data_config_share_their_defaults():
    flags = {f.name: f.default for f in dataclasses.fields(DataTrainingArguments)}
    shared = {f.name: f.default for f in dataclasses.fields(DataConfig) if f.name in flags}
    assert {"dynamic_image_size", "use_thumbnail", "max_dynamic_patch", "force_image_size"} <= set(shared)
    assert shared == {name: flags[name] for name in shared}
    assert (DataConfig().dynamic_image_size, DataConfig().use_thumbnail) == (False, False)  # InternVL's script


def test_bad_tiling_flags_are_refused_with_the_flag_name(tmp_path):
    with pytest.raises(ValueError, match="min_dynamic_patch 5 is larger than max_dynamic_patch 4"):
        parse_args(["--model_name_or_path", "m", "--meta_path", "x", "--output_dir", str(tmp_path),
                    "--min_dynamic_patch", "5", "--max_dynamic_patch", "4"])


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_saved_checkpoint_carries_the_training_settings(tiny_original, tmp_path, layout):
    from vlaser.model.checkpoint import inspect_checkpoint
    from vlaser.train.saving import save_checkpoint
    from vlaser.train.sft import _record_settings

    model_args, data_args, _ = parse_args(["--model_name_or_path", str(tiny_original), "--meta_path", "x",
                                           "--output_dir", str(tmp_path), "--force_image_size", "56",
                                           "--dynamic_image_size", "True", "--max_dynamic_patch", "4"])
    model, tok = vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")
    _record_settings(model, model_args, data_args)
    out = save_checkpoint(model, tok, tmp_path / "out", layout=layout, source=tiny_original)
    config = inspect_checkpoint(out).config
    saved = config if layout == "original" else config["internvl_chat"]
    assert {k: saved[k] for k in ("max_dynamic_patch", "use_thumbnail", "dynamic_image_size", "force_image_size",
                                  "min_dynamic_patch", "template")} == {
        "max_dynamic_patch": 4, "use_thumbnail": False, "dynamic_image_size": True, "force_image_size": 56,
        "min_dynamic_patch": 1, "template": "internvl2_5"}
    vlm = VLM.from_pretrained(out, dtype=torch.float32, device="cpu")
    assert vlm.max_tiles == 4 and vlm.media(Image.new("RGB", WIDE)).num_patches == [4]


def test_a_trained_model_infers_with_its_training_settings(tiny_original, tmp_path):
    from test_train import colour_data, flags
    from vlaser.train.sft import train

    out = train(flags(tiny_original, colour_data(tmp_path), tmp_path / "out", "--use_thumbnail", "False",
                      "--max_steps", "1"))
    vlm = VLM.from_pretrained(out, dtype=torch.float32, device="cpu")
    image = Image.new("RGB", WIDE)
    assert vlm.max_tiles == 4 and vlm.media(image).num_patches == [4]
    assert vlm.media(image, max_tiles=6).num_patches == [6]


def test_chat_point_tiles_with_the_checkpoints_settings_unless_asked(tiny_original, tmp_path, caplog):
    """``vlaser chat --point``'s own default is no choice: a checkpoint saved with ``max_dynamic_patch`` 1 gets one
    tile, as the server gives it; ``--max-num`` still sets the tiles."""
    ckpt = _with_settings(tiny_original, tmp_path / "one", max_dynamic_patch=1)
    path = tmp_path / "scene.png"
    Image.new("RGB", (1120, 840), (0, 90, 200)).save(path)
    for extra, expected in (([], "1 tile (max_num 1)"), (["--max-num", "4"], "4 tiles + thumbnail (max_num 4)")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vlaser.api"):
            assert main(["-v", "chat", "--model", str(ckpt), "--image", str(path), "--point", "--max-new-tokens",
                         "2", *extra, "Point to the cup."]) == 0
        assert [r.getMessage() for r in caplog.records if r.name == "vlaser.api"] == [
            f"image {path}: 1120x840 -> {expected}"]
