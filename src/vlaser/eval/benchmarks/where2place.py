"""Where2Place (RoboPoint): free-space pointing, scored as RoboPoint's ``summarize_vqa.py`` does.

Layouts: RoboPoint's ``point_questions.jsonl`` (``question_id``, ``image``, ``text``, ``category``),
``images/``, ``masks/NN.jpg`` named by line index; or FlagEval's parquet (``question_id``, ``question``,
``question_type``, ``image``, ``mask``). Item id: ``question_id``.
Score: mean over questions of the mean mask value at the predicted points. The JPEG mask is not
binarised (soft edges give partial credit), out-of-image points score 0, and an answer whose parsing
fails is skipped (left out of the mean) -- all as the official code does. RoboPoint-style answers
(``[(0.41, 0.52)]``) are scaled with its hard-coded 640x480.
Options: ``binarize=true`` rounds the mask; ``unparsed_as_zero=true`` scores failed parses 0;
``real_size=true`` scales RoboPoint answers by the real image size.
"""

from __future__ import annotations

from pathlib import Path

from vlaser.eval.benchmark import (
    VLASER_EXAMPLE,
    Benchmark,
    BenchmarkDataError,
    EvalProtocol,
    Item,
    Score,
    keep_damaged_lines,
)
from vlaser.eval.masks import image_size, robopoint_mean_score
from vlaser.eval.parquet import find_parquet, image_file, iter_rows
from vlaser.jsonl import read_jsonl

FORMAT_SPLIT = " Your answer"


class Where2Place(Benchmark):
    name = "where2place"
    known_options = ("binarize", "real_size", "unparsed_as_zero")
    protocols = (
        EvalProtocol("vlaser", prompt="vlaser", max_tiles=12, max_new_tokens=1024, source=VLASER_EXAMPLE),
        EvalProtocol("official", prompt="official", max_tiles=12, max_new_tokens=1024,
                 source="the benchmark's own prompt, with eval_example.py's generation settings"),
    )

    def load(self, data_dir: Path) -> list[Item]:
        questions = data_dir / "point_questions.jsonl"
        if not questions.is_file():
            if find_parquet(data_dir):
                return self._load_parquet(find_parquet(data_dir))
            raise BenchmarkDataError(f"{questions} not found (expected RoboPoint's where2place layout or "
                                     "FlagEval's parquet)")
        items = []
        # a damaged line stays an unreadable item (named, counted, left out); the masks still go by position
        for number, row in read_jsonl(questions, on_error=keep_damaged_lines(items, questions)):
            index = number - 1  # masks/NN.jpg goes by the line's position in the file
            try:
                text, image = row["text"], data_dir / "images" / row["image"]
                qid = str(row["question_id"])
            except (KeyError, TypeError) as e:
                raise BenchmarkDataError(f"{questions}:{number}: {e}") from e
            items.append(Item(id=qid, question=text.split(FORMAT_SPLIT)[0].strip(), official_prompt=text,
                              images=[image], group=str(row.get("category", "")),
                              meta={"mask": str(data_dir / "masks" / f"{index:02d}.jpg")}))
        return items

    def _load_parquet(self, files: list[Path]) -> list[Item]:
        items = []
        for row, folder, where in iter_rows(files):
            try:
                qid, text = str(row["question_id"]), row["question"]
                image = image_file(row["image"], folder, f"{qid}.img", where)
                mask = image_file(row["mask"], folder, f"{qid}.mask", where)
            except KeyError as e:
                raise BenchmarkDataError(f"{where}: no column {e}") from e
            items.append(Item(id=qid, question=text.split(FORMAT_SPLIT)[0].strip(), official_prompt=text,
                              images=[image], group=str(row.get("question_type") or ""), meta={"mask": str(mask)}))
        return items

    def score(self, item: Item, response: str) -> Score:
        return robopoint_mean_score(
            item, response, "round" if self.options.get("binarize") else "soft",
            size=lambda: image_size(item.images[0]) if self.options.get("real_size") else (640, 480),
            unparsed_as_zero=bool(self.options.get("unparsed_as_zero")))
