"""``SFTDataset``: InternVL-format records -> tokenised samples with tiles, as ``LazySupervisedDataset`` builds them.

Per record: single image (``<image>\\n`` prepended to the first human turn when absent), several images
(tile budget ``max(1, max_dynamic_patch // n_images)`` each), a local video (``Frame-i: <image>`` lines for
``<video>``), or pure text (a white dummy tile with ``image_flag`` 0, so the vision tower runs on every
rank). A record that cannot be used is skipped, counted with its dataset and line, and the next record
(in order, never a random one) is returned in its place.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter

import numpy as np
import torch
from PIL import Image

from vlaser.data.config import DataConfig
from vlaser.data.meta import Annotations, DatasetSpec, Record, Skip, load_meta, media_path, read_annotations
from vlaser.data.tokenize import SampleError, Tokenized, preprocess_internvl2_5
from vlaser.errors import UserInputError
from vlaser.model.constants import IMG_END_TOKEN
from vlaser.model.preprocess import ImageLoadError, dynamic_preprocess, image_to_tiles, pil_to_tensor, to_pil
from vlaser.model.template import get_template, with_image_tag, with_video_frames

log = logging.getLogger(__name__)
_MAX_SKIPS_IN_A_ROW = 100


def jpeg_degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """InternVL's ``data_augment``: re-encode as JPEG with a quality drawn uniformly from 75..100."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(75, 101)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def frame_indices(n_frames: int, video_len: int, rng: np.random.Generator) -> list[int]:
    """InternVL's ``rand`` sampling: ``n_frames`` equal intervals, one random frame from each."""
    n = min(n_frames, video_len)
    bounds = np.linspace(0, video_len, n + 1).astype(int)
    ranges = [(bounds[i], bounds[i + 1] - 1) for i in range(n)]
    if all(hi > lo for lo, hi in ranges):
        return [int(rng.integers(lo, hi)) for lo, hi in ranges]
    return sorted(rng.permutation(video_len)[:n].tolist())


class SFTDataset(torch.utils.data.Dataset):
    """Map-style dataset over every record of a meta JSON.

    Each item is a dict with ``input_ids``, ``labels`` (1-D long tensors), ``pixel_values``
    ``(n_tiles, 3, S, S)``, ``image_flags`` ``(n_tiles,)``, ``tiles`` (per image), ``id``, ``dataset``,
    ``line`` and ``skipped`` (the records passed over to reach this one).
    """

    def __init__(self, meta_path, tokenizer, config: DataConfig, specs: list[DatasetSpec] | None = None):
        self.tokenizer, self.config = tokenizer, config
        self.template = get_template(config.conv_style)
        self.records: list[Record] = []
        self.load_skips: list[Skip] = []
        for spec in specs or load_meta(meta_path):
            ann: Annotations = read_annotations(spec)
            self.records.extend(ann.records)
            self.load_skips.extend(ann.skips)
            log.info("dataset %s: %d samples, %d unreadable lines", spec.name, len(ann.records), len(ann.skips))
        for skip in self.load_skips:
            log.warning("skipped %s", skip)
        if not self.records:
            raise UserInputError(f"{meta_path}: no usable samples ({len(self.load_skips)} skipped)")

    def resampling_weights(self) -> list[float]:
        """``--use_data_resampling``: each dataset drawn in proportion to sqrt(its size), as InternVL weighs them.

        Per sample that is ``sqrt(n_d) / n_d`` for a sample of a dataset with ``n_d`` samples (after
        ``repeat_time``), so small datasets are seen more often and large ones less than their share.
        """
        sizes = Counter(record.spec.name for record in self.records)
        return [math.sqrt(sizes[r.spec.name]) / sizes[r.spec.name] for r in self.records]

    def estimated_lengths(self) -> list[int]:
        """Token counts for length grouping, as InternVL estimates them without loading images.

        A record's ``length`` field if present, else the tokens of its joined turns plus
        ``num_image_token * (max_dynamic_patch + use_thumbnail)`` for image and video samples.
        """
        c = self.config
        image_tokens = c.num_image_token * (c.max_dynamic_patch + int(c.use_thumbnail))
        lengths = []
        for record in self.records:
            data = record.data
            if isinstance(data.get("length"), int):
                lengths.append(data["length"])
                continue
            text = "\n".join(str(turn.get("value", "")) for turn in data["conversations"])
            n = len(self.tokenizer(text)["input_ids"])
            lengths.append(n + (image_tokens if data.get("image") or data.get("video") else 0))
        return lengths

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        skipped = []
        for step in range(min(len(self.records), _MAX_SKIPS_IN_A_ROW)):
            record = self.records[(index + step) % len(self.records)]
            try:
                item = self.build(record, np.random.default_rng((self.config.seed, index, step)))
            except (SampleError, ImageLoadError, OSError, KeyError, TypeError, ValueError) as e:
                skip = Skip(record.spec.name, str(record.spec.annotation), record.line, str(e))
                log.warning("skipped %s", skip)
                skipped.append(skip)
                continue
            item["skipped"] = skipped
            return item
        raise UserInputError(f"{len(skipped)} samples in a row could not be used, e.g. {skipped[0]}")

    # ---- one record ------------------------------------------------------------------------------

    def build(self, record: Record, rng: np.random.Generator) -> dict:
        """Tiles and tokens of one record (raises ``SampleError`` / ``ImageLoadError`` when unusable)."""
        data = record.data
        conversations = [dict(turn) for turn in data["conversations"]]
        if data.get("video"):
            tiles_per_image, pixel_values = self._video(record, conversations, rng)
        elif data.get("image"):
            tiles_per_image, pixel_values = self._images(record, conversations, rng)
        else:
            tiles_per_image, pixel_values = [], None
        text_only = pixel_values is None
        tokens = preprocess_internvl2_5(conversations, self.tokenizer, self.template, tiles_per_image,
                                        self.config.num_image_token, self.config.max_seq_length, text_only)
        self._check_usable(tokens, len(tiles_per_image))
        if text_only:  # a white dummy tile keeps the vision tower in every step's graph
            white = Image.new("RGB", (224, 224), (255, 255, 255))
            pixel_values = image_to_tiles(white, max_num=1, min_num=self.config.min_dynamic_patch,
                                          image_size=self.config.force_image_size)
        flags = torch.full((pixel_values.shape[0],), 0 if text_only else 1, dtype=torch.long)
        return {
            "input_ids": torch.tensor(tokens.input_ids, dtype=torch.long),
            "labels": torch.tensor(tokens.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "image_flags": flags,
            "tiles": tiles_per_image,
            "id": data.get("id"),
            "dataset": record.spec.name,
            "line": record.line,
        }

    def _check_usable(self, tokens: Tokenized, n_images: int) -> None:
        if tokens.truncated:
            kept_ends = tokens.input_ids.count(self.tokenizer.convert_tokens_to_ids(IMG_END_TOKEN))
            if kept_ends != n_images:
                raise SampleError(f"max_seq_length={self.config.max_seq_length} would cut inside the image tokens "
                                  f"({kept_ends} of {n_images} images kept)")
        if tokens.n_supervised == 0:
            raise SampleError("no supervised (assistant) tokens"
                              + (f" within max_seq_length={self.config.max_seq_length}" if tokens.truncated else ""))

    def _tiles(self, image: Image.Image, max_num: int, augment: bool, rng) -> torch.Tensor:
        c = self.config
        if c.dynamic_image_size and not augment:  # the inference path's tiling, exactly
            return image_to_tiles(image, max_num=max_num, min_num=c.min_dynamic_patch,
                                  image_size=c.force_image_size, use_thumbnail=c.use_thumbnail)
        if c.dynamic_image_size:  # augmentation re-encodes each tile, so keep them as images
            tiles = dynamic_preprocess(image, c.min_dynamic_patch, max_num, c.force_image_size, c.use_thumbnail)
        else:
            tiles = [image]
        if augment:
            tiles = [jpeg_degrade(t, rng) for t in tiles]
        size = c.force_image_size
        return torch.stack([pil_to_tensor(t if t.size == (size, size) else t.resize((size, size), Image.BICUBIC))
                            for t in tiles])

    def _images(self, record: Record, conversations: list[dict], rng) -> tuple[list[int], torch.Tensor]:
        paths = record.data["image"]
        single = isinstance(paths, str)
        paths = [paths] if single else list(paths)
        budget = record.spec.max_dynamic_patch or self.config.max_dynamic_patch
        if single:
            first_human = next((t for t in conversations if t["from"] == "human"), None)
            if first_human is None:
                raise SampleError("no human turn")
            first_human["value"] = with_image_tag(first_human["value"])
        else:
            budget = max(1, budget // len(paths))
        tiles = [self._tiles(to_pil(media_path(record, p)), budget, record.spec.data_augment, rng) for p in paths]
        return [t.shape[0] for t in tiles], torch.cat(tiles)

    def _video(self, record: Record, conversations: list[dict], rng) -> tuple[list[int], torch.Tensor]:
        from vlaser.model.preprocess import decode_frames

        path = media_path(record, record.data["video"])
        n_frames = int(rng.integers(self.config.min_num_frame, self.config.max_num_frame + 1))
        frames = decode_frames(path, lambda video_len: frame_indices(n_frames, video_len, rng))
        first = conversations[0] if conversations[0]["from"] != "system" else conversations[1]
        try:
            first["value"] = with_video_frames(first["value"], len(frames))
        except ValueError as e:
            raise SampleError(str(e)) from None
        tiles = [self._tiles(f, 1, record.spec.data_augment, rng) for f in frames]
        return [t.shape[0] for t in tiles], torch.cat(tiles)
