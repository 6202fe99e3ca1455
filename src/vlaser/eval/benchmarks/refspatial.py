"""RefSpatial-Bench (RoboRefer): fraction of predicted points inside the mask, per split.

Layouts: ``Location/``, ``Placement/``, ``Unseen/``, each with ``question.json`` (``id``, ``object``,
``prompt``, ``suffix``, ``rgb_path``, ``mask_path``, ...) and its ``image/`` and ``mask/`` folders; or the
parquet splits ``location``/``placement``/``unseen`` (``id``, ``image``, ``mask``, ``prompt``, ``suffix``,
...). Item id: ``<split folder>/<id>``, e.g. ``Location/12``, in both layouts.
Mask: first channel / 255 > 0. The official prompt is ``"{prompt} {suffix}"``;
such answers are parsed with RoboRefer's ``text2pts`` on the real image size (4-tuples scaled even when
integer). Out-of-image points count 0, no point gives 0, a failed parse is skipped (as the official code).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlaser.eval.benchmark import VLASER_EXAMPLE, Benchmark, BenchmarkDataError, EvalProtocol, Item, Score
from vlaser.eval.masks import image_size, robopoint_mean_score
from vlaser.eval.parquet import find_parquet, image_file, iter_rows

SPLITS = ("Location", "Placement", "Unseen")


class RefSpatial(Benchmark):
    name = "refspatial"
    known_options = ("unparsed_as_zero",)
    protocols = (
        EvalProtocol("vlaser", prompt="vlaser", max_tiles=12, max_new_tokens=1024, source=VLASER_EXAMPLE),
        EvalProtocol("official", prompt="official", max_tiles=12, max_new_tokens=1024,
                 source="the benchmark's own prompt, with eval_example.py's generation settings"),
    )

    def load(self, data_dir: Path) -> list[Item]:
        present = [s for s in SPLITS if (data_dir / s / "question.json").is_file()]
        if not present:
            parquet = {s: find_parquet(data_dir, s) for s in SPLITS}
            if any(parquet.values()):
                return self._load_parquet(parquet)
            raise BenchmarkDataError(f"{data_dir}: none of {[f'{s}/question.json' for s in SPLITS]} "
                                     "nor location/placement/unseen parquet files found")
        items = []
        for split in present:
            path = data_dir / split / "question.json"
            try:
                rows = json.loads(path.read_text())
                for row in rows:
                    items.append(Item(
                        id=f"{split}/{row['id']}", question=row["prompt"],
                        official_prompt=f"{row['prompt']} {row['suffix']}",
                        images=[data_dir / split / row["rgb_path"]], group=split,
                        meta={"mask": str(data_dir / split / row["mask_path"]), "step": row.get("step")}))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise BenchmarkDataError(f"{path}: {e!r}") from e
        return items

    def _load_parquet(self, files: dict[str, list[Path]]) -> list[Item]:
        items = []
        for split, paths in files.items():
            for row, folder, where in iter_rows(paths):
                try:
                    image = image_file(row["image"], folder, f"{row['id']}.img", where)
                    mask = image_file(row["mask"], folder, f"{row['id']}.mask", where)
                    items.append(Item(id=f"{split}/{row['id']}", question=row["prompt"],
                                      official_prompt=f"{row['prompt']} {row['suffix']}", images=[image],
                                      group=split, meta={"mask": str(mask), "step": row.get("step")}))
                except KeyError as e:
                    raise BenchmarkDataError(f"{where}: no column {e}") from e
        return items

    def score(self, item: Item, response: str) -> Score:
        return robopoint_mean_score(item, response, "nonzero", size=lambda: image_size(item.images[0]),
                                    unparsed_as_zero=bool(self.options.get("unparsed_as_zero")), scale_int_boxes=True)
