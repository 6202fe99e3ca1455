"""Molmo's pointing evaluation (``olmo/eval/evaluators.py`` ``PointingEval``), reproduced for Pixmo-Points.

Points are parsed like Molmo's ``extract_points`` (``Click(x,y)``, ``(x,y)``, ``x="" y=""`` attributes,
``p=xxx,yyy``; percent, values over 100 dropped), answers must pass its whole-string format gate, and
predictions are matched one-to-one to ground-truth points with the Hungarian algorithm; a hit is a
matched prediction inside that ground-truth point's mask.
"""

from __future__ import annotations

import re

import numpy as np

from vlaser.errors import require

_NUM = r"(\d+(?:\.\d+)?)"
_CLICK = re.compile(rf"Click\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")
_TUPLE = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")
_ATTR = re.compile(rf'x\d*\s*=\s*"\s*{_NUM}\s*"\s+y\d*\s*=\s*"\s*{_NUM}\s*"')
_P = re.compile(r"p\s*=\s*(\d{3})\s*,\s*(\d{3})")
_VALID = (
    re.compile(rf"^\s*(?:\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*\n?)+\s*$"),
    re.compile(r"^\s*<point\s[^>]*>[^<]*</point>\s*$", re.DOTALL),
    re.compile(r"^\s*<points\s[^>]*>[^<]*</points>\s*$", re.DOTALL),
    re.compile(r"^\s*(?:p\s*=\s*\d{3}\s*,\s*\d{3}\s*;?\s*)+$"),
)


def extract_points(text: str, width: int, height: int) -> list[tuple[float, float]]:
    """Percent points of a Molmo-style answer, in pixels; values over 100 are dropped."""
    found = []
    for pattern, divisor in ((_CLICK, 1), (_ATTR, 1), (_P, 10), (_TUPLE, 1)):
        for x, y in pattern.findall(text):
            found.append((float(x) / divisor, float(y) / divisor))
        if found:
            break
    return [(x / 100 * width, y / 100 * height) for x, y in found if x <= 100 and y <= 100]


def is_valid_format(text: str) -> bool:
    """Molmo's gate: the whole answer is one of its point formats, nothing else."""
    return any(p.match(text) for p in _VALID)


def pointing_scores(pred: list[tuple[float, float]], gt: list[tuple[float, float]], masks: list[np.ndarray],
                    valid: bool) -> dict[str, float]:
    """Precision, recall and F1 of one example, with Molmo's empty-ground-truth and format rules."""
    linear_sum_assignment = require("scipy.optimize", "eval", "Molmo's point matching").linear_sum_assignment
    from scipy.spatial.distance import cdist

    if not gt:
        value = 1.0 if not pred else 0.0
        return {"precision": value, "recall": value, "f1": value}
    if not valid or not pred:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    rows, cols = linear_sum_assignment(cdist(np.asarray(pred), np.asarray(gt)))
    hits = 0
    for i, j in zip(rows, cols):
        x, y = (int(round(v)) for v in pred[i])
        mask = masks[j]
        hits += bool(0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x])
    precision, recall = hits / len(pred), hits / len(gt)
    f1 = 0.0 if not precision or not recall else 2 * precision * recall / (precision + recall + 1e-10)
    return {"precision": precision, "recall": recall, "f1": f1}
