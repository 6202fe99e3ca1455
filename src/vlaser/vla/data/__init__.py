"""Robot data for Vlaser-VLA: LeRobot dataset v3.0 read and written (pyarrow, PyAV), normalisation from its
statistics, action-chunk training samples, and a dataset check with a summary."""

from vlaser.vla.data.chunks import ActionChunkDataset
from vlaser.vla.data.inspect import DatasetSummary, inspect_dataset
from vlaser.vla.data.lerobot import Episode, EpisodeInfo, LeRobotDataset, Truncation, write_dataset
from vlaser.vla.data.normalize import Normalizer

__all__ = ["ActionChunkDataset", "DatasetSummary", "Episode", "EpisodeInfo", "LeRobotDataset", "Normalizer",
           "Truncation", "inspect_dataset", "write_dataset"]
