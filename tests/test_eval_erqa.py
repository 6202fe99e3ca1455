"""ERQA: the TFRecord reader, the visual_indices layout, both answer extractors, and runs on synthetic data.

The tfrecord fixtures are written with an independent encoder: ``tf.train.Example`` messages built by the
``protobuf`` package from a descriptor defined here, framed with a bit-at-a-time CRC-32C written here.
"""

import io
import json
import os
import struct

import pytest
from PIL import Image

from vlaser.cli import main
from vlaser.eval.benchmark import BenchmarkDataError, get_benchmark
from vlaser.eval.benchmarks.erqa import extract_letter, interleave, lmms_eval_choice
from vlaser.eval.tfrecord import crc32c, iter_records, masked_crc32c, parse_example
from vlaser.inference.prepare import between

SUFFIX = " Please answer directly with only the letter of the correct option and nothing else."

# ---- an independent tf.Example encoder and TFRecord writer -------------------------------------------------------


def _example_class(packed: bool):
    """``tf.train.Example`` as a protobuf class, from a descriptor built here (numeric lists packed or not)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FieldDescriptorProto
    package = f"erqatest{int(packed)}"
    proto = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")

    def field(message, name, number, kind, label=fd.LABEL_OPTIONAL, type_name=None, packed_list=None):
        f = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            f.type_name = f".{package}.{type_name}"
        if packed_list is not None:
            f.options.packed = packed_list
        return f

    for name, kind in (("BytesList", fd.TYPE_BYTES), ("FloatList", fd.TYPE_FLOAT), ("Int64List", fd.TYPE_INT64)):
        message = proto.message_type.add(name=name)
        field(message, "value", 1, kind, fd.LABEL_REPEATED, packed_list=packed if kind != fd.TYPE_BYTES else None)
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                                ("int64_list", "Int64List")), start=1):
        field(feature, name, number, fd.TYPE_MESSAGE, type_name=type_name).oneof_index = 0
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, fd.TYPE_STRING)
    field(entry, "value", 2, fd.TYPE_MESSAGE, type_name="Feature")
    field(features, "feature", 1, fd.TYPE_MESSAGE, fd.LABEL_REPEATED, type_name="Features.FeatureEntry")
    field(proto.message_type.add(name="Example"), "features", 1, fd.TYPE_MESSAGE, type_name="Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Example"))


def encode_example(features: dict, packed: bool = True) -> bytes:
    """Serialize ``{name: list of bytes | floats | ints}`` as a tf.Example (an empty tuple leaves kind unset)."""
    example = _example_class(packed)()
    for name, values in features.items():
        feature = example.features.feature[name]
        if isinstance(values, tuple) and not values:
            continue
        if all(isinstance(v, bytes) for v in values):
            feature.bytes_list.value.extend(values)
        elif all(isinstance(v, int) for v in values):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(values)
    return example.SerializeToString()


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C one bit at a time, straight from the reflected polynomial."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = bitwise_crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecord(path, payloads) -> None:
    with open(path, "wb") as stream:
        for data in payloads:
            length = struct.pack("<Q", len(data))
            stream.write(length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data)))


# ---- the synthetic dataset ---------------------------------------------------------------------------------------


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="JPEG")
    return buf.getvalue()


Q_SINGLE = ("If the yellow robot gripper follows the yellow trajectory, what will happen? Choices: A. Robot puts "
            "the soda on the wooden steps. B. Robot moves the soda in front of the steps. C. Robot moves the soda "
            "to the top. D. Robot drops the can." + SUFFIX)
Q_VIEWS = ("The first image: The second image: Which view shows the open gripper? Choices: A. The first. "
           "B. The second. C. Both. D. Neither." + SUFFIX)
Q_PAIR = "Which image was taken later? Choices: A. The first. B. The second. C. Same time. D. Unknown." + SUFFIX
RECORDS = [  # question, images (colours), visual_indices, question_type, answer
    (Q_SINGLE, [(200, 0, 0)], [0], "Trajectory Reasoning", "A"),
    (Q_VIEWS, [(0, 200, 0), (0, 0, 200)], [16, 34], "Multi-view Reasoning", "B"),
    (Q_PAIR, [(250, 250, 0), (0, 250, 250)], [0, 0], "Spatial Reasoning", "C"),
]


def _features(question, colors, indices, qtype, answer) -> dict:
    return {"question": [question.encode()], "image/encoded": [_jpeg(c) for c in colors], "answer": [answer.encode()],
            "question_type": [qtype.encode()], "visual_indices": indices}


def make_dataset(root):
    """The official layout: ``erqa.tfrecord`` with three tf.Examples (1 image; 2 interleaved; 2 at offset 0)."""
    root.mkdir(parents=True, exist_ok=True)
    write_tfrecord(root / "erqa.tfrecord", [encode_example(_features(*record)) for record in RECORDS])
    return root


def make_parquet(root):
    """FlagEval/ERQA's parquet layout with the same three questions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rows = [{"question_id": f"ERQA_{k + 1}", "question": q, "question_type": t, "answer": a, "visual_indices": v,
             "images": [{"bytes": _jpeg(c), "path": None} for c in colors]}
            for k, (q, colors, v, t, a) in enumerate(RECORDS)]
    pq.write_table(pa.Table.from_pylist(rows), root / "test-00000-of-00001.parquet")
    return root


def _color(path):
    return Image.open(path).convert("RGB").getpixel((32, 24))


def _near(color, expected):
    return all(abs(a - b) < 12 for a, b in zip(color, expected))


# ---- CRC and TFRecord framing ------------------------------------------------------------------------------------


def test_crc32c_known_vector_and_long_inputs():
    assert crc32c(b"123456789") == 0xE3069283 == bitwise_crc32c(b"123456789")
    assert crc32c(b"") == 0
    for size in (1, 2047, 2048, 5000, 65 * 1024 + 7):  # the lane path starts at 16 lanes of 64 bytes
        data = os.urandom(size)
        assert crc32c(data) == bitwise_crc32c(data), size
    assert masked_crc32c(b"123456789") == _masked(b"123456789")


def test_tfrecord_round_trip_and_damage_is_named(tmp_path):
    path = tmp_path / "x.tfrecord"
    payloads = [b"first", b"", os.urandom(3000)]
    write_tfrecord(path, payloads)
    assert list(iter_records(path)) == payloads
    data = bytearray(path.read_bytes())
    data[12 + 5 + 4 + 12 + 0 + 4 + 12 + 100] ^= 1  # a byte inside record 2's data
    (tmp_path / "bad.tfrecord").write_bytes(bytes(data))
    with pytest.raises(BenchmarkDataError, match=r"bad\.tfrecord: record 2: data checksum"):
        list(iter_records(tmp_path / "bad.tfrecord"))
    (tmp_path / "cut.tfrecord").write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BenchmarkDataError, match=r"cut\.tfrecord: record 2: truncated"):
        list(iter_records(tmp_path / "cut.tfrecord"))
    (tmp_path / "header.tfrecord").write_bytes(path.read_bytes() + b"\x05\x00")
    with pytest.raises(BenchmarkDataError, match=r"record 3: truncated header"):
        list(iter_records(tmp_path / "header.tfrecord"))
    (tmp_path / "text.tfrecord").write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(BenchmarkDataError, match=r"record 0: length checksum"):
        list(iter_records(tmp_path / "text.tfrecord"))


@pytest.mark.parametrize("packed", [True, False])
def test_example_decoding_matches_protobuf(packed):
    features = {"question": ["Où? ✓".encode()], "image/encoded": [b"\xff\xd8jpeg", b"", b"\x00" * 300],
                "visual_indices": [0, 17, -3, 2**40, 2**63 - 1], "score": [0.5, -1.25, 3.0], "empty": ()}
    decoded = parse_example(encode_example(features, packed=packed))
    assert decoded == {"question": ["Où? ✓".encode()], "image/encoded": [b"\xff\xd8jpeg", b"", b"\x00" * 300],
                       "visual_indices": [0, 17, -3, 2**40, 2**63 - 1], "score": [0.5, -1.25, 3.0], "empty": []}
    assert parse_example(b"") == {}
    with pytest.raises(ValueError, match="wire type"):
        parse_example(b"\x0b")  # field 1 as a (deprecated) group
    with pytest.raises(ValueError, match="announced"):
        parse_example(b"\x0a\x05ab")


# ---- layout ------------------------------------------------------------------------------------------------------


def test_two_images_interleaved_prompt_pinned():
    prompt, order = interleave(Q_VIEWS, [34, 16], 2)  # image 0 goes at 34, image 1 at 16
    assert prompt == ("The first image:<image> The second image:<image> Which view shows the open gripper? "
                      "Choices: A. The first. B. The second. C. Both. D. Neither. Please answer directly with only "
                      "the letter of the correct option and nothing else.")
    assert order == [1, 0]


def test_layout_rules():
    assert interleave("Q?", [0], 1) == ("<image>\nQ?", [0])
    assert interleave("Q?", [], 1) == ("<image>\nQ?", [0])
    assert interleave("Q?", [0, 0], 2) == ("Image-1: <image>\nImage-2: <image>\nQ?", [0, 1])
    assert interleave("Q?", [1], 2) == ("Image-1: <image>\nImage-2: <image>\nQ?", [0, 1])  # count mismatch
    assert interleave("abcdef", [3, 0], 2) == ("<image>\nabc<image>def", [1, 0])
    assert interleave("abc", [2, 10], 2) == ("ab<image><image>c", [0, 1])  # past the end: before the tail
    assert interleave("abcdef", [4, 4], 2) == ("abcd<image><image>ef", [0, 1])
    assert interleave("abc", [3], 1) == ("abc<image>", [0])


def test_benchmark_placed_pictures_are_written_by_the_prepare_step():
    assert between(["a", None, "b", None]) == "a<image>b<image>"
    assert between(["x\n", None, "y\n"], "Image: <image>\n") == "x\nImage: <image>\ny\n"
    with pytest.raises(ValueError, match="one <image> tag"):
        between(["a", None], "Image: \n")


# ---- answer extraction -------------------------------------------------------------------------------------------

VLASER_CASES = [
    ("A", "A"), ("b", "B"), (" C. ", "C"), ("(D)", "D"), ("**B**", "B"), ("`a`", "A"),
    ("The answer is B", "B"), ("The answer is (C).", "C"), ("Answer: D", "D"), ("answer: A", "A"),
    ("**Final answer:** A", "A"), ("The correct option is C.", "C"), ("\\boxed{C}", "C"),
    ("The robot moves left, so the arm must rotate.\nAnswer: D", "D"),
    ("I first thought the answer is A, but the final answer is C.", "C"),
    ("A. Robot puts the soda on the wooden steps.", "A"), ("(B) The second.", "B"), ("C) Up", "C"),
    ("B\nThe gripper is open in the second view.", "B"),
    ("A robot picks up the can.", None), ("I think C", None), ("The answer is a robot arm.", None),
    ("Answer: A or B", None), ("The answer is A, B", None), ("Option C is correct", None), ("E", None), ("", None),
    ("Both A and B look plausible.", None),
]


@pytest.mark.parametrize(("response", "letter"), VLASER_CASES)
def test_vlaser_letter_extraction(response, letter):
    assert extract_letter(response) == letter


LMMS_CASES = [
    ("A robot picks up the can", "A"),  # start-of-text beats everything
    ("The answer is (B).", "B"),
    ("b", ""),  # case-sensitive
    ("the answer is that Both arms move", "B"),  # the first capital after the phrase, inside a word
    ("Because of the Door", "D"),  # fallback: the last capital choice anywhere
    ("A: left, B: right. I choose B", "A"),  # start (10) beats the phrase (7)
    ("I pick C", "C"), ("(D)", "D"), ("", ""),
]


@pytest.mark.parametrize(("response", "letter"), LMMS_CASES)
def test_lmms_eval_priority_extractor(response, letter):
    assert lmms_eval_choice(response) == letter


# ---- loading and scoring -----------------------------------------------------------------------------------------


def test_tfrecord_items_prompts_and_images(tmp_path):
    bench = get_benchmark("erqa")
    items = bench.load(make_dataset(tmp_path / "erqa"))
    assert [i.id for i in items] == ["0", "1", "2"]
    assert [i.group for i in items] == ["Trajectory Reasoning", "Multi-view Reasoning", "Spatial Reasoning"]
    assert bench.prompt(items[0], "vlaser") == "<image>\n" + Q_SINGLE == bench.prompt(items[0], "official")
    assert bench.prompt(items[1], "vlaser").startswith("The first image:<image> The second image:<image> Which view")
    assert bench.prompt(items[2], "vlaser") == "Image-1: <image>\nImage-2: <image>\n" + Q_PAIR
    assert _near(_color(items[1].images[0]), (0, 200, 0)) and _near(_color(items[1].images[1]), (0, 0, 200))
    assert bench.score(items[1], "B").value == 1.0 and bench.score(items[1], "The answer is A").value == 0.0
    unparsed = bench.score(items[1], "A robot picks up the can.")
    assert unparsed.value == 0.0 and not unparsed.parsed


def test_parquet_layout_matches_the_tfrecord(tmp_path):
    bench = get_benchmark("erqa")
    official = bench.load(make_dataset(tmp_path / "tf"))
    flageval = bench.load(make_parquet(tmp_path / "pq"))
    assert [i.id for i in flageval] == ["ERQA_1", "ERQA_2", "ERQA_3"]
    assert [i.official_prompt for i in flageval] == [i.official_prompt for i in official]
    assert [[_color(p) for p in i.images] for i in flageval] == [[_color(p) for p in i.images] for i in official]


def test_lmms_eval_protocol_puts_images_first_and_reads_lmms_style(tmp_path):
    bench = get_benchmark("erqa", protocol="lmms_eval")
    items = bench.load(make_dataset(tmp_path / "erqa"))
    assert bench.prompt(items[1], "vlaser") == "Image-1: <image>\nImage-2: <image>\n" + Q_VIEWS
    assert bench.score(items[0], "A robot picks up the can.").value == 1.0  # lmms-eval reads the article as A
    assert not bench.score(items[0], "a").parsed


def test_bad_records_are_named(tmp_path):
    bench = get_benchmark("erqa")
    with pytest.raises(BenchmarkDataError, match="no erqa.tfrecord"):
        bench.load(tmp_path)
    cases = {"answer": [b"E"], "question": [], "image/encoded": [], "visual_indices": [-1]}
    for name, value in cases.items():
        folder = tmp_path / name.replace("/", "_")
        folder.mkdir()
        good = encode_example(_features(*RECORDS[0]))
        bad = encode_example({**_features(*RECORDS[0]), name: value})
        write_tfrecord(folder / "erqa.tfrecord", [good, bad])
        with pytest.raises(BenchmarkDataError, match=r"erqa\.tfrecord record 1"):
            bench.load(folder)
    (tmp_path / "junk").mkdir()
    write_tfrecord(tmp_path / "junk" / "erqa.tfrecord", [encode_example(_features(*RECORDS[0])), b"\x0b"])
    with pytest.raises(BenchmarkDataError, match=r"erqa\.tfrecord: record 1: not a tf\.train\.Example"):
        bench.load(tmp_path / "junk")
    both = make_parquet(make_dataset(tmp_path / "both"))
    with pytest.raises(BenchmarkDataError, match="both"):
        bench.load(both)


def test_eval_score_per_type_and_unknown_ids(tmp_path):
    data = make_dataset(tmp_path / "erqa")
    preds = tmp_path / "preds.jsonl"
    answers = {"0": "A", "1": "The answer is C.", "2": "A robot took it later.", "nope": "A"}
    preds.write_text("".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in answers.items()))
    out = tmp_path / "out"
    assert main(["eval", "score", "--benchmark", "erqa", "--data", str(data), "--predictions", str(preds),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["score"] == pytest.approx(1 / 3) and metrics["n_unparsed"] == 1 and metrics["n_unknown_ids"] == 1
    assert metrics["by_group"] == {"Multi-view Reasoning": {"score": 0.0, "n": 1},
                                   "Spatial Reasoning": {"score": 0.0, "n": 1},
                                   "Trajectory Reasoning": {"score": 1.0, "n": 1}}
    lmms = tmp_path / "lmms"
    assert main(["eval", "score", "--benchmark", "erqa", "--protocol", "lmms_eval", "--data", str(data),
                 "--predictions", str(preds), "--out", str(lmms)]) == 0
    assert json.loads((lmms / "metrics.json").read_text())["score"] == pytest.approx(1 / 3)  # "A robot" is A, not C


@pytest.mark.slow
def test_eval_run_with_the_tiny_model(tiny_original, tmp_path):
    data = make_dataset(tmp_path / "erqa")
    out = tmp_path / "out"
    assert main(["eval", "run", "--model", str(tiny_original), "--benchmark", "erqa", "--data", str(data), "--out",
                 str(out), "--max-new-tokens", "8", "--dtype", "float32", "--limit", "3"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["0", "1", "2"] and not any("error" in r for r in records)
    assert records[1]["prompt"].count("<image>") == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] == 3 and 0.0 <= metrics["score"] <= 1.0
