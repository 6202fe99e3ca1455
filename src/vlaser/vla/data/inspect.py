"""Validate a LeRobot v3.0 dataset and summarise it (what ``vlaser vla data PATH`` prints).

Every metadata and data file is read, every video's frame times are read (no decoding) and each episode's
first image of every image feature is decoded, so a missing or malformed file fails here with its name, and
truncated episodes are counted. A dataset whose robot type names Bridge or Fractal is checked against the Octo
conventions the release trained on (``conventions.py``); what is off is a warning in the summary and the log.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaser.vla.data.conventions import ConventionCheck, check_conventions
from vlaser.vla.data.lerobot import LeRobotDataset

log = logging.getLogger(__name__)


@dataclass
class DatasetSummary:
    """What a dataset holds: counts, features with shapes, tasks, cameras and truncated episodes."""

    root: str
    codebase_version: str
    robot_type: str | None
    fps: float
    episodes: int
    frames: int
    expected_frames: int
    features: dict[str, dict[str, Any]]
    cameras: dict[str, dict[str, Any]]
    tasks: list[str]
    truncated: list[dict[str, Any]]
    #: ``{"robot": "bridge" | "fractal" | None, "problems": [...]}``: the Octo conventions check
    conventions: dict[str, Any] = field(default_factory=lambda: {"robot": None, "problems": []})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``--json``)."""
        return dataclasses.asdict(self)

    def render(self) -> str:
        """A readable multi-line summary."""
        lines = [f"LeRobot dataset {self.root} ({self.codebase_version}, robot: {self.robot_type or 'unknown'})",
                 f"  episodes: {self.episodes}  frames: {self.frames}"
                 + (f" (metadata says {self.expected_frames})" if self.frames != self.expected_frames else "")
                 + f"  fps: {self.fps:g}", "  features:"]
        width = max(len(k) for k in self.features)
        for key, feature in self.features.items():
            lines.append(f"    {key:<{width}}  {feature['dtype']:<8} {feature['shape']}")
        lines.append("  cameras: " + (", ".join(
            f"{k} ({c['dtype']}{', ' + c['codec'] if c.get('codec') else ''}, {'x'.join(map(str, c['shape']))})"
            for k, c in self.cameras.items()) or "none"))
        lines.append(f"  tasks ({len(self.tasks)}):")
        lines += [f"    {i}: {task}" for i, task in enumerate(self.tasks)]
        lines.append(f"  truncated episodes: {len(self.truncated)}")
        lines += [f"    episode {t['episode']}: {t['file']} has {t['found']} of its {t['expected']} frames"
                  for t in self.truncated]
        lines += ConventionCheck(**self.conventions).render(self.robot_type)
        return "\n".join(lines)


def inspect_dataset(root: str | Path) -> DatasetSummary:
    """Read and check the whole dataset at ``root``; a ``UserInputError`` names a missing or malformed file."""
    dataset = LeRobotDataset(root, check_videos=True)
    image_keys = [k for k in dataset.cameras if dataset.features[k]["dtype"] == "image"]
    truncated_episodes = {t.episode for t in dataset.truncated}
    for episode in dataset.episodes:
        if episode.index not in truncated_episodes and episode.length:
            for key in image_keys:
                dataset.camera_frame(episode.index, 0, key)
    check = check_conventions(dataset)
    for problem in check.problems:
        log.warning("%s (%s): %s", dataset.root, check.robot, problem)
    cameras = {k: {"dtype": dataset.features[k]["dtype"], "shape": dataset.features[k]["shape"],
                   "codec": dataset.features[k].get("info", {}).get("video.codec")} for k in dataset.cameras}
    return DatasetSummary(
        root=str(dataset.root), codebase_version=dataset.info["codebase_version"],
        robot_type=dataset.info.get("robot_type"), fps=dataset.fps, episodes=len(dataset.episodes),
        frames=len(dataset), expected_frames=int(dataset.info["total_frames"]),
        features={k: {"dtype": f["dtype"], "shape": f["shape"]} for k, f in dataset.features.items()},
        cameras=cameras, tasks=list(dataset.tasks),
        truncated=[{"episode": t.episode, "file": str(t.path), "expected": t.expected, "found": t.found}
                   for t in dataset.truncated],
        conventions=dataclasses.asdict(check))
