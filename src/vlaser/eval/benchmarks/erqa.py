"""ERQA (Embodied Reasoning QA, Gemini Robotics): 400 multiple-choice questions on one or more images.

Reads the official ``erqa.tfrecord`` or FlagEval's parquet; places the images where ``visual_indices`` put them
(the official harness's layout, through the prepare step); scores with vlaser's documented letter extraction or
lmms-eval's. Layouts, prompt, protocols, generation settings and their sources: ``docs/benchmarks/erqa.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlaser.eval.benchmark import Benchmark, BenchmarkDataError, EvalProtocol, Item, Score
from vlaser.eval.parquet import cache_dir, find_parquet, image_file, iter_rows
from vlaser.eval.tfrecord import read_examples
from vlaser.inference.prepare import between, images_first

LETTERS = ("A", "B", "C", "D")

# ---- prompt layout ------------------------------------------------------------------------------------------------


def interleave(question: str, visual_indices: list[int], n_images: int) -> tuple[str, list[int]]:
    """The prompt with ``<image>`` tags where ``visual_indices`` place the images, and the image order of the tags.

    Follows the official harness / VLMEvalKit ``build_prompt`` (docs/benchmarks/erqa.md), quirks included; the
    tags are written by the prepare step.
    """
    if len(visual_indices) != n_images or all(index == 0 for index in visual_indices):
        return images_first(question, n_images), list(range(n_images))
    pairs = sorted(enumerate(visual_indices), key=lambda pair: pair[1])  # stable: ties keep file order
    pieces: list[str | None] = []
    last = 0
    for _, offset in pairs:
        if offset == 0:
            pieces += [None, "\n"]  # InternVL's single-image form, <image>\n
        elif offset <= len(question):
            pieces += [question[last:offset], None]
            last = offset
        else:  # past the end: emitted now, i.e. before the tail -- as the official code does
            pieces.append(None)
    pieces.append(question[last:])
    return between(pieces), [image for image, _ in pairs]


# ---- answer extraction --------------------------------------------------------------------------------------------

_WRAPPERS = " \t\r\n.,:;!?()[]{}*_`\"'"
_MARKED = re.compile(
    r"(?i:\b(?:final\s+)?(?:answer|option|choice))"  # the marker, any case
    r"[\s*_`]*(?:(?i:is)\b[\s*_`]*:?|[:=])"  # "is" (or "is:") or a colon
    r"[\s*_`\"'(\[{]*"  # presentation wrappers
    r"([A-D])(?![A-Za-z0-9])"  # a capital letter that is not the start of a word
    r"(?!\s*(?:,|/|(?i:or|and)\b)\s*[(\[]?[A-D](?![A-Za-z0-9]))"  # not one of several alternatives
)
_BOXED = re.compile(r"\\boxed\{\s*([A-D])\s*\}")
_LEADING = re.compile(r"[*_`\"'(\[]*([A-D])(?:[.):\]]|[*_`\"']*[ \t]*(?:\n|$))")


def extract_letter(response: str) -> str | None:
    """The ``vlaser`` protocol's answer letter (rules in docs/benchmarks/erqa.md), or None."""
    bare = response.strip(_WRAPPERS)
    if len(bare) == 1 and bare.upper() in LETTERS:
        return bare.upper()
    marked = [(m.start(), m.group(1)) for pattern in (_MARKED, _BOXED) for m in pattern.finditer(response)]
    if marked:
        return max(marked)[1]
    leading = _LEADING.match(response.strip())
    return leading.group(1) if leading else None


_LMMS_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
#: lmms-eval's suffixed formats and their priorities ("(A)" is handled apart: it has a prefix too)
_LMMS_SUFFIXES = ((".", 5), (":", 4), (")", 3), (" ", 2))


def lmms_eval_choice(response: str, choices: tuple[str, ...] = LETTERS) -> str:
    """lmms-eval's priority extractor (``mcq_extract.py`` at c228e273), reproduced in behaviour; ``""`` for none."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for char in ",.!?;:'\"":
        text = text.strip(char)
    text = f" {text} "
    candidates: list[tuple[int, int, str]] = []  # (priority, position, letter)
    candidates += [(6, text.rfind(f"({c})"), c) for c in choices if f"({c})" in text]
    for suffix, priority in _LMMS_SUFFIXES:
        candidates += [(priority, text.rfind(c + suffix), c) for c in choices if c + suffix in text]
    lowered = text.lower()
    for phrase in _LMMS_PHRASES:
        start = lowered.find(phrase)
        if start >= 0:  # the first capital of each choice anywhere after the phrase's first occurrence
            after = start + len(phrase)
            candidates += [(7, text.find(c, after), c) for c in choices if text.find(c, after) >= 0]
    core = text.strip()
    candidates += [(10, 0, c) for c in choices if core.startswith(c) and (len(core) == 1 or not core[1].isalpha())]
    candidates += [(9, len(text) - 1, c) for c in choices
                   if core.endswith(c) and (len(core) == 1 or not core[-2].isalpha())]
    if not candidates:
        candidates = [(0, text.rfind(c), c) for c in choices if c in text]
    if not candidates:
        return ""
    best = max(candidate[:2] for candidate in candidates)
    return next(letter for priority, position, letter in candidates if (priority, position) == best)


# ---- the benchmark ------------------------------------------------------------------------------------------------


def _text(value: Any, name: str, where: str) -> str:
    """A string field: a ``str`` (parquet) or the first entry of a bytes list (tf.Example)."""
    if isinstance(value, list):
        if not value:
            raise BenchmarkDataError(f"{where}: {name} is empty")
        value = value[0]
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BenchmarkDataError(f"{where}: {name} is not UTF-8 text") from e
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkDataError(f"{where}: {name} missing or not text (got {type(value).__name__})")
    return value


def _indices(value: Any, where: str) -> list[int]:
    """``visual_indices``: absent or null is an empty list; anything else must be offsets >= 0."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BenchmarkDataError(f"{where}: visual_indices must be a list of integers, got {value!r:.80}")
    if any(v < 0 for v in value):
        raise BenchmarkDataError(f"{where}: negative visual_indices {list(value)}")
    return list(value)


class ERQA(Benchmark):
    name = "erqa"
    protocols = (EvalProtocol("vlaser", max_tiles=6, max_new_tokens=1024, source="docs/benchmarks/erqa.md"),
                 EvalProtocol("lmms_eval", max_tiles=6, max_new_tokens=1024,
                          source="lmms-eval's erqa task: images first, its priority letter extractor"))
    pointing = False

    def load(self, data_dir: Path) -> list[Item]:
        data_dir = Path(data_dir)
        records, tables = sorted(data_dir.rglob("*.tfrecord")), find_parquet(data_dir)
        if records and tables:
            raise BenchmarkDataError(f"{data_dir}: holds both the official tfrecord ({records[0].name}) and parquet "
                                     f"({tables[0].name}); their item ids differ, so point --data at one of them")
        if len(records) > 1:
            raise BenchmarkDataError(f"{data_dir}: several .tfrecord files ({', '.join(p.name for p in records)}); "
                                     "ERQA ids are record indices within erqa.tfrecord, so keep only that file")
        if records:
            return self._load_tfrecord(records[0])
        if tables:
            return self._load_parquet(tables)
        raise BenchmarkDataError(f"{data_dir}: no erqa.tfrecord (official ERQA) or parquet (FlagEval/ERQA) found")

    def _load_tfrecord(self, path: Path) -> list[Item]:
        folder = cache_dir(path)
        items = []
        for index, features in read_examples(path):
            where = f"{path} record {index}"
            images = features.get("image/encoded") or []
            if not all(isinstance(image, bytes) for image in images):
                raise BenchmarkDataError(f"{where}: image/encoded is not a bytes list")
            files = [image_file(image, folder, f"{index}_{k}.jpg", where) for k, image in enumerate(images)]
            items.append(self._item(str(index), features.get("question"), features.get("answer"),
                                    features.get("question_type"), files, features.get("visual_indices", []), where))
        return items

    def _load_parquet(self, files: list[Path]) -> list[Item]:
        items = []
        for row, folder, where in iter_rows(files):
            qid = row.get("question_id")
            if qid is None or not str(qid).strip():
                raise BenchmarkDataError(f"{where}: question_id missing")
            try:
                images = [image_file(im, folder, f"{qid}_{k}.jpg", where) for k, im in enumerate(row["images"])]
            except (KeyError, TypeError) as e:
                raise BenchmarkDataError(f"{where}: images missing or not a list of images ({e!r})") from e
            items.append(self._item(str(qid), row.get("question"), row.get("answer"), row.get("question_type"),
                                    images, row.get("visual_indices"), where))
        return items

    def _item(self, qid: str, question: Any, answer: Any, question_type: Any, images: list[Path], indices: Any,
              where: str) -> Item:
        """Validate one record and lay out its prompt for this protocol."""
        question = _text(question, "question", where)
        answer = _text(answer, "answer", where).strip()
        if answer not in LETTERS:
            raise BenchmarkDataError(f"{where}: answer {answer!r} is not one of {'/'.join(LETTERS)}")
        group = _text(question_type, "question_type", where)
        if not images:
            raise BenchmarkDataError(f"{where}: no images")
        indices = _indices(indices, where)
        if self.protocol == "lmms_eval":
            prompt, order = images_first(question, len(images)), list(range(len(images)))
        else:
            prompt, order = interleave(question, indices, len(images))
        return Item(id=qid, question=question, official_prompt=prompt, images=[images[k] for k in order],
                    group=group, meta={"answer": answer, "visual_indices": indices})

    def score(self, item: Item, response: str) -> Score:
        lmms = self.protocol == "lmms_eval"
        choice = (lmms_eval_choice(response) or None) if lmms else extract_letter(response)
        return Score(float(choice == item.meta["answer"]), parsed=choice is not None,
                     extra={"choice": choice, "answer": item.meta["answer"]})
