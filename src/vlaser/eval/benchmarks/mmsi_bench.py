"""MMSI-Bench: multi-image spatial multiple choice, scored as its ``vlmeval/dataset/mmsi_bench.py`` does.

Layout: ``MMSI_Bench.parquet`` (``id``, ``images`` as a list of JPEG bytes, ``question_type``, ``question``
with its options, ``answer`` letter). Item id: ``id``. Prompt: the images, then
``"{question}\\nAnswer with the option's letter from the given choices directly. Enclose the option's letter
within ``."``. Extraction: narrow to the text inside double, then single backticks; take the first isolated
capital A-D not followed by a space and a word; none scores 0. Accuracy overall and per question type.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, EvalProtocol, Item, Score
from vlaser.eval.parquet import find_parquet, image_file, iter_rows

SUFFIX = "\nAnswer with the option's letter from the given choices directly. Enclose the option's letter within ``."
_LETTER = re.compile(r"\b[A-D]\b(?!\s[a-zA-Z])")


def extract_choice(text: str) -> str | None:
    """The official rule: backtick narrowing, then the first isolated A-D not followed by a word."""
    for fence in ("``", "`"):
        match = re.search(rf"{fence}(.*?){fence}", text, re.DOTALL)
        if match:
            text = match.group(1)
    found = _LETTER.search(text)
    return found.group(0) if found else None


class MMSIBench(Benchmark):
    name = "mmsi_bench"
    pointing = False
    protocols = (EvalProtocol("official", max_tiles=6, max_new_tokens=1024,
                          source="InternRobotics/MMSI-Bench's VLMEvalKit fork; generation as eval_example.py"),)

    def load(self, data_dir: Path) -> list[Item]:
        files = find_parquet(data_dir, "mmsi")
        if not files:
            raise BenchmarkDataError(f"{data_dir}: no MMSI_Bench*.parquet found")
        items = []
        for row, folder, where in iter_rows(files):
            try:
                qid = str(row["id"])
                images = [image_file(im, folder, f"{qid}_{k}.jpg", where) for k, im in enumerate(row["images"])]
                question, answer = row["question"], str(row["answer"]).strip()
            except (KeyError, TypeError) as e:
                raise BenchmarkDataError(f"{where}: {e!r}") from e
            items.append(Item(id=qid, question=question, official_prompt=question + SUFFIX, images=images,
                              group=str(row.get("question_type") or ""), meta={"answer": answer}))
        return items

    def score(self, item: Item, response: str) -> Score:
        choice = extract_choice(response)
        correct = choice is not None and item.meta["answer"].lower() == choice.lower()[0]
        return Score(float(correct), parsed=choice is not None, extra={"choice": choice})
