"""Synthetic tabletop scenes of coloured shapes, written as InternVL SFT data and as held-out benchmarks.

Training data is InternVL's meta JSON + JSONL (point grounding in Vlaser's ``<point>`` format with the
seed's prompt, and image-dependent questions); held-out sets use Where2Place's layout (questions,
images, masks) and MMSI-Bench's parquet layout (multiple choice), so ``vlaser eval run`` scores them.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlaser.points import point_question

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30)}
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
    noise_seed: int | None = None

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.size, self.size), self.background)
        if self.noise_seed is not None:  # a textured table instead of a plain one
            rng = np.random.default_rng(self.noise_seed)
            noise = rng.integers(-18, 19, (self.size, self.size, 3))
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


def random_scene(rng: np.random.Generator, size: int, n_objects: int, plain: bool, big: bool) -> Scene:
    """Objects of distinct (colour, shape) placed without overlap on a plain or textured table."""
    background = tuple(int(v) for v in rng.integers(150, 220, 3)) if not plain else (200, 200, 200)
    scene = Scene(size=size, background=background, noise_seed=None if plain else int(rng.integers(1 << 30)))
    kinds = [(s, c) for s in SHAPES for c in COLOURS]
    picks = rng.choice(len(kinds), size=n_objects, replace=False)
    for pick in picks:
        for _ in range(100):
            radius = size * (rng.uniform(0.22, 0.32) if big else rng.uniform(0.09, 0.15))
            cx, cy = rng.uniform(radius, size - radius, 2)
            if all(math.dist((cx, cy), (o.cx, o.cy)) > radius + o.radius + 2 for o in scene.objects):
                shape, colour = kinds[pick]
                scene.objects.append(Shape(shape, colour, float(cx), float(cy), float(radius)))
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
    letters = "ABCD"
    text = ", ".join(f"{letters[k]}: {options[j]}" for k, j in enumerate(order))
    answer = letters[int(np.where(order == 0)[0][0])]
    return f"Which object is {relation} the {a.name}?\nOptions: {text}", answer


def identity_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """"What colour is the <shape>?" as a multiple choice (the answer needs the image)."""
    target = scene.objects[int(rng.integers(len(scene.objects)))]
    options = list(COLOURS)
    rng.shuffle(options)
    letters = "ABCD"
    text = ", ".join(f"{letters[k]}: {c}" for k, c in enumerate(options))
    return f"What colour is the {target.shape}?\nOptions: {text}", letters[options.index(target.colour)]


def _scene_for(rng, size, preset, curriculum: float) -> Scene:
    if preset == "basic":
        return random_scene(rng, size, 1, plain=rng.random() < 1 - curriculum, big=rng.random() < 1 - curriculum)
    return random_scene(rng, size, int(rng.integers(2, 5)), plain=False, big=False)


def write_training_set(out: Path, n: int, seed: int = 0, size: int = 112, preset: str = "basic") -> Path:
    """``out/meta.json`` + ``out/train.jsonl`` + ``out/images``: pointing, naming and choice questions.

    The first part of the set is easy (one large object on a plain table), the rest standard (a curriculum
    in file order; shuffle is the trainer's). A colour-naming question stays mixed in throughout.
    """
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        scene = _scene_for(rng, size, preset, curriculum=min(1.0, 2 * i / n))
        name = f"{i:06d}.png"
        scene.render().save(out / "images" / name)
        target = int(rng.integers(len(scene.objects)))
        gx, gy = scene.grid_point(target)
        task = point_question(f"Point to the {scene.objects[target].name}.")
        turns = [{"from": "human", "value": "<image>\n" + task},
                 {"from": "gpt", "value": f"<point>[[{gx}, {gy}]]</point>"}]
        kind = rng.random()
        if kind < 0.5:
            turns += [{"from": "human", "value": "What is the object?" if len(scene.objects) == 1 else
                       f"What colour is the {scene.objects[target].shape}?"},
                      {"from": "gpt", "value": scene.objects[target].name if len(scene.objects) == 1 else
                       scene.objects[target].colour}]
        else:
            question = (relation_question(scene, rng) if preset == "hard" else None) or identity_question(scene, rng)
            turns += [{"from": "human", "value": question[0]}, {"from": "gpt", "value": question[1]}]
        lines.append({"id": i, "image": name, "width": size, "height": size, "conversations": turns})
    (out / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    meta = {"quickstart": {"root": str(out / "images"), "annotation": str(out / "train.jsonl"), "data_augment": False,
                           "repeat_time": 1, "length": n}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out / "meta.json"


def write_where2place(out: Path, n: int, seed: int = 1, size: int = 112, preset: str = "basic") -> Path:
    """Held-out pointing in Where2Place's layout: ``point_questions.jsonl``, ``images/``, ``masks/NN.jpg``."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        scene = _scene_for(rng, size, preset, curriculum=1.0)
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
        scene = _scene_for(rng, size, preset, curriculum=1.0)
        question = (relation_question(scene, rng) if preset == "hard" else None) or identity_question(scene, rng)
        buf = io.BytesIO()
        scene.render().save(buf, format="JPEG", quality=95)
        rows.append({"id": len(rows), "images": [buf.getvalue()], "question": question[0], "answer": question[1],
                     "question_type": "relation" if question[0].startswith("Which") else "colour", "thought": ""})
    pq.write_table(pa.Table.from_pylist(rows), out / "MMSI_Bench.parquet")
    return out
