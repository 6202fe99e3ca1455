"""One JSONL reader (``vlaser.jsonl.read_jsonl``) for training annotations, benchmark files and eval predictions."""

import pytest

from vlaser.data.meta import DatasetSpec, read_annotations
from vlaser.errors import UserInputError
from vlaser.eval.runner import read_predictions
from vlaser.jsonl import JSONLError, read_jsonl


def test_lines_come_with_their_numbers_and_blank_lines_are_passed_over(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2, 3]\n"text"\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, [2, 3]), (5, "text")]


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"b": 2}\n')
    with pytest.raises(JSONLError, match=rf"{path}:2: invalid JSON") as error:
        list(read_jsonl(path))
    assert isinstance(error.value, UserInputError) and isinstance(error.value, ValueError)
    assert error.value.line == 2 and not error.value.last
    seen = []
    assert list(read_jsonl(path, on_error=seen.append)) == [(1, {"a": 1}), (3, {"b": 2})]
    assert [(e.line, e.last) for e in seen] == [(2, False)]


def test_training_annotations_skip_bad_lines_by_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"conversations": [{"from": "human", "value": "hi"}]}\nnot json\n{"id": 1}\n')
    out = read_annotations(DatasetSpec(name="d", root="", annotation=path))
    assert [r.line for r in out.records] == [1]
    reasons = [(s.line, s.reason.split(":")[0]) for s in out.skips]
    assert reasons == [(2, "invalid JSON"), (3, "no 'conversations' list")]


def test_predictions_tolerate_only_a_torn_last_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a", "response": "x"}\n{"id": "b", "resp')
    assert list(read_predictions(path)) == ["a"]
    path.write_text('{"id": "a", "response": "x"}\n{"id": "b", "resp\n{"id": "c"}\n')
    with pytest.raises(JSONLError, match=rf"{path}:2: invalid JSON"):
        read_predictions(path)
    path.write_text('{"response": "x"}\n{"id": "c"}\n')
    with pytest.raises(UserInputError, match=rf"{path}:1: not a prediction record"):
        read_predictions(path)


def test_read_json_names_the_file_and_what_is_wrong(tmp_path):
    from vlaser.jsonl import read_json

    good, bad, latin = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "latin.json"
    good.write_text('{"a": [1, 2]}')
    bad.write_text('{\n  "a": ,\n}')
    latin.write_bytes(b'{"a": "\xe9"}')
    assert read_json(good) == {"a": [1, 2]}
    with pytest.raises(UserInputError, match=rf"{tmp_path / 'none.json'}: missing"):
        read_json(tmp_path / "none.json")
    with pytest.raises(UserInputError, match=rf"{bad}: not valid JSON \(line 2, column 8"):
        read_json(bad)
    with pytest.raises(UserInputError, match=rf"{latin}: not UTF-8 text"):
        read_json(latin)
