"""Synthetic tabletop scenes of coloured shapes, written as InternVL SFT data and as held-out benchmarks.

Training data is InternVL's meta JSON + JSONL (point grounding in Vlaser's ``<point>`` format with the
seed's prompt, and image-dependent questions); held-out sets use Where2Place's layout (questions,
images, masks) and MMSI-Bench's parquet layout (multiple choice), so ``vlaser eval run`` scores them.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlaser.drawing import COLOURS
from vlaser.eval.benchmarks.mmsi_bench import SUFFIX as MMSI_SUFFIX
from vlaser.points import point_question

SHAPES = ("circle", "square", "triangle")
LETTERS = "ABCD"
WHERE2PLACE_SUFFIX = (" Your answer should be formatted as a list of tuples, i.e. [(x1, y1), (x2, y2), ...], where "
                      "each tuple contains the x and y coordinates of a point satisfying the conditions above.")


@dataclass
class Shape:
    shape: str
    colour: str
    cx: float
    cy: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def draw(self, draw: ImageDraw.ImageDraw, fill) -> None:
        x, y, r = self.cx, self.cy, self.radius
        if self.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif self.shape == "square":
            s = r * 0.85
            draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
        else:
            draw.polygon([(x, y - r), (x + r * math.sin(2.094), y - r * math.cos(2.094)),
                          (x - r * math.sin(2.094), y - r * math.cos(2.094))], fill=fill)


@dataclass
class Scene:
    size: int
    background: tuple[int, int, int]
    objects: list[Shape] = field(default_factory=list)
    noise: int = 18
    noise_seed: int | None = None

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.size, self.size), self.background)
        if self.noise and self.noise_seed is not None:  # a textured table instead of a plain one
            rng = np.random.default_rng(self.noise_seed)
            noise = rng.integers(-self.noise, self.noise + 1, (self.size, self.size, 3))
            image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            obj.draw(draw, COLOURS[obj.colour])
        return image

    def mask(self, index: int) -> np.ndarray:
        canvas = Image.new("L", (self.size, self.size), 0)
        self.objects[index].draw(ImageDraw.Draw(canvas), 255)
        return np.asarray(canvas)

    def grid_point(self, index: int) -> tuple[int, int]:
        """The object's centre on the 0-1000 grid (a triangle's centroid sits inside it too)."""
        obj = self.objects[index]
        cy = obj.cy + (obj.radius * 0.25 if obj.shape == "triangle" else 0)
        return round(obj.cx / self.size * 1000), round(cy / self.size * 1000)


def random_scene(rng: np.random.Generator, size: int, n_objects: int, plain: bool, radius: tuple[float, float],
                 texture: int = 18) -> Scene:
    """Objects of distinct (colour, shape) placed without overlap on a grey or a tinted, textured table;
    ``radius`` is the range of object radii as a fraction of the image size."""
    background = (200, 200, 200) if plain else tuple(int(v) for v in rng.integers(150, 220, 3))
    scene = Scene(size=size, background=background, noise=0 if plain else texture,
                  noise_seed=None if plain else int(rng.integers(1 << 30)))
    kinds = [(s, c) for s in SHAPES for c in COLOURS]
    picks = rng.choice(len(kinds), size=n_objects, replace=False)
    for pick in picks:
        for _ in range(100):
            r = size * rng.uniform(*radius)
            cx, cy = rng.uniform(r, size - r, 2)
            if all(math.dist((cx, cy), (o.cx, o.cy)) > r + o.radius + 2 for o in scene.objects):
                shape, colour = kinds[pick]
                scene.objects.append(Shape(shape, colour, float(cx), float(cy), float(r)))
                break
    return scene


def relation_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """"Which object is left of / above X?" as a multiple choice over the scene's other objects."""
    anchor = int(rng.integers(len(scene.objects)))
    a = scene.objects[anchor]
    relation, key = (("left of", lambda o: o.cx < a.cx - a.radius), ("above", lambda o: o.cy < a.cy - a.radius))[
        int(rng.integers(2))]
    others = [o for i, o in enumerate(scene.objects) if i != anchor]
    answers = [o for o in others if key(o)]
    if len(answers) != 1:
        return None
    distractors = [f"{c} {s}" for s in SHAPES for c in COLOURS if f"{c} {s}" != answers[0].name]
    options = [answers[0].name] + list(rng.choice(distractors, size=3, replace=False))
    order = rng.permutation(4)
    text = ", ".join(f"{LETTERS[k]}: {options[j]}" for k, j in enumerate(order))
    return f"Which object is {relation} the {a.name}?\nOptions: {text}", LETTERS[int(np.where(order == 0)[0][0])]


def unique_shapes(scene: Scene) -> list[Shape]:
    """Objects that "the <shape>" names unambiguously."""
    shapes = Counter(o.shape for o in scene.objects)
    return [o for o in scene.objects if shapes[o.shape] == 1]


def colour_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """"What colour is the <shape>?" as a multiple choice with the colours in a fixed order (the letter is
    decided by the image alone); None when every shape in the scene repeats."""
    candidates = unique_shapes(scene)
    if not candidates:
        return None
    target = candidates[int(rng.integers(len(candidates)))]
    text = ", ".join(f"{LETTERS[k]}: {c}" for k, c in enumerate(COLOURS))
    return f"What colour is the {target.shape}?\nOptions: {text}", LETTERS[list(COLOURS).index(target.colour)]


def multiple_choice(scene: Scene, rng: np.random.Generator, preset: str) -> tuple[str, str, str] | None:
    """``(question, answer letter, question type)``: relations in the hard preset (when one answer exists),
    else the colour question; None when neither has a unique answer."""
    if preset == "hard":
        relation = relation_question(scene, rng)
        if relation is not None:
            return relation[0], relation[1], "relation"
    colour = colour_question(scene, rng)
    return None if colour is None else (colour[0], colour[1], "colour")


def scene_for(rng: np.random.Generator, size: int, preset: str, easy: bool = False) -> Scene:
    """A standard scene of the preset, or an easy one (one large object on a grey table).

    basic: one object (radius 10-15 % of the image) on a tinted table; hard: 2-4 smaller objects on a
    textured table.
    """
    if easy:
        return random_scene(rng, size, 1, plain=True, radius=(0.22, 0.32))
    if preset == "basic":
        return random_scene(rng, size, 1, plain=False, radius=(0.10, 0.15), texture=0)
    return random_scene(rng, size, int(rng.integers(2, 5)), plain=False, radius=(0.09, 0.15))


def _conversation(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def write_training_set(out: Path, n: int, seed: int = 0, size: int = 112, preset: str = "basic",
                       easy_fraction: float = 0.3) -> Path:
    """``out/meta.json`` + ``out/train.jsonl`` + ``out/images``: one task per sample.

    Half the samples are Vlaser point grounding (the seed's point prompt, ``<point>[[x, y]]</point>`` on the
    0-1000 grid), a quarter name the object ("red circle": answerable from the image's colours, which keeps
    the image features in use while pointing is learned), a quarter are multiple choice in MMSI-Bench's
    prompt format. ``easy_fraction`` of the scenes hold one large object on a grey table all along, so the
    shuffled stream always has examples where pointing is easy.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(n), desc="training scenes", unit="scene", mininterval=1.0):
        scene = scene_for(rng, size, preset, easy=rng.random() < easy_fraction)
        name = f"{i:06d}.png"
        scene.render().save(out / "images" / name)
        target = int(rng.integers(len(scene.objects)))
        task = rng.random()
        choice = multiple_choice(scene, rng, preset) if task >= 0.75 else None
        named = unique_shapes(scene)
        if 0.5 <= task < 0.75 and named:
            obj = named[int(rng.integers(len(named)))] if len(named) > 1 else named[0]
            turns = _conversation(*(("What is the object?", obj.name) if len(scene.objects) == 1 else
                                          (f"What colour is the {obj.shape}?", obj.colour)))
        elif choice is not None:
            turns = _conversation(choice[0] + MMSI_SUFFIX, choice[1])
        else:  # pointing (half the samples, and any whose question would be ambiguous)
            gx, gy = scene.grid_point(target)
            turns = _conversation(point_question(f"Point to the {scene.objects[target].name}."),
                                  f"<point>[[{gx}, {gy}]]</point>")
        lines.append({"id": i, "image": name, "width": size, "height": size, "conversations": turns})
    (out / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    # paths relative to the meta file, so `vlaser train --meta_path` works on it from any folder
    meta = {"quickstart": {"root": "images", "annotation": "train.jsonl", "data_augment": False, "repeat_time": 1,
                           "length": n}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out / "meta.json"


def write_where2place(out: Path, n: int, seed: int = 1, size: int = 112, preset: str = "basic") -> Path:
    """Held-out pointing in Where2Place's layout: ``point_questions.jsonl``, ``images/``, ``masks/NN.jpg``."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        scene = scene_for(rng, size, preset)
        target = int(rng.integers(len(scene.objects)))
        scene.render().save(out / "images" / f"{i}.png")
        Image.fromarray(scene.mask(target)).save(out / "masks" / f"{i:02d}.jpg", quality=95)
        lines.append({"question_id": i, "image": f"{i}.png", "category": preset,
                      "text": f"Point to the {scene.objects[target].name}." + WHERE2PLACE_SUFFIX})
    (out / "point_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return out


def write_mmsi(out: Path, n: int, seed: int = 2, size: int = 112, preset: str = "basic") -> Path:
    """Held-out multiple choice in MMSI-Bench's parquet layout (one image per question)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    while len(rows) < n:
        scene = scene_for(rng, size, preset)
        choice = multiple_choice(scene, rng, preset)
        if choice is None:
            continue
        question, answer, kind = choice
        buf = io.BytesIO()
        scene.render().save(buf, format="JPEG", quality=95)
        rows.append({"id": len(rows), "images": [buf.getvalue()], "question": question, "answer": answer,
                     "question_type": kind, "thought": ""})
    pq.write_table(pa.Table.from_pylist(rows), out / "MMSI_Bench.parquet")
    return out
