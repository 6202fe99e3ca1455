"""LeRobot v3.0 datasets (vlaser.vla.data): write/read round trip, layout and schema, normalisation, action
chunks, and the errors and counts for bad or truncated files."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from media import frame_index, write_counter_video
from vlaser.errors import UserInputError, VlaserError
from vlaser.vla.data import ActionChunkDataset, Episode, LeRobotDataset, Normalizer, inspect_dataset, write_dataset
from vlaser.vla.data.video import VideoFile, VideoWriter, default_codec

FPS = 10
LENGTHS = (5, 7, 4)
SIZE = 32
TASKS = ("move to the red disc", "move to the green disc")
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "gripper"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["dx", "gripper"]},
    "observation.images.top": {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]},
    "observation.images.wrist": {"dtype": "image", "shape": [SIZE, SIZE, 3],
                                 "names": ["height", "width", "channels"]},
}
TOP, WRIST = "observation.images.top", "observation.images.wrist"


def scene(episode: int, t: int) -> np.ndarray:
    """A smooth frame (a colour gradient and a square whose place encodes the episode and frame)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    frame = np.stack([x * 6, y * 6, np.full_like(x, 40 + 60 * episode)], axis=-1).astype(np.uint8)
    top, left = 2 + 3 * episode, 2 + 3 * t
    frame[top:top + 6, left:left + 6] = 255
    return frame


def make_episodes(lengths=LENGTHS, seed=0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    episodes = []
    for e, length in enumerate(lengths):
        frames = np.stack([scene(e, t) for t in range(length)])
        episodes.append(Episode(task=TASKS[e % 2], features={
            "observation.state": rng.normal(size=(length, 3)).astype(np.float32),
            "action": rng.normal(size=(length, 2)).astype(np.float32),
            TOP: frames, WRIST: frames[:, ::-1].copy()}))
    return episodes


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse)) if mse else float("inf")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    episodes = make_episodes()
    root = write_dataset(tmp_path_factory.mktemp("lerobot") / "ds", episodes, FPS, FEATURES, robot_type="toy")
    return root, episodes


def copy_of(written, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(written[0], root)
    return root


# ------------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("codec", ["av1", "h264"])
def test_round_trip_gives_tabular_features_exactly_and_video_within_codec_loss(tmp_path, codec):
    if codec == "av1" and default_codec() != "av1":
        pytest.skip("this PyAV has no AV1 encoder")
    episodes = make_episodes()
    dataset = LeRobotDataset(write_dataset(tmp_path / "ds", episodes, FPS, FEATURES, video_codec=codec))
    assert dataset.info["features"][TOP]["info"]["video.codec"] == codec
    assert len(dataset) == sum(LENGTHS) and dataset.truncated == []
    for e, episode in enumerate(episodes):
        got = dataset.episode(e)
        for key in ("observation.state", "action"):
            assert got[key].dtype == np.float32 and np.array_equal(got[key], episode.features[key])
        assert np.array_equal(got["frame_index"], np.arange(LENGTHS[e]))
        assert np.array_equal(got["timestamp"], (np.arange(LENGTHS[e]) / FPS).astype(np.float32))
        assert got["task"] == episode.task
        assert np.array_equal(dataset.camera_frames(e, WRIST), episode.features[WRIST])  # PNG: lossless
        video = dataset.camera_frames(e, TOP)
        assert video.dtype == np.uint8 and video.shape == (LENGTHS[e], SIZE, SIZE, 3)
        # CRF 30 on 32x32 frames, measured: AV1 35-37 dB PSNR and 2.6-3.0 levels mean absolute error,
        # H.264 32-34 dB and 3.8-4.1 levels
        assert psnr(video, episode.features[TOP]) > 30
        assert np.abs(video.astype(int) - episode.features[TOP]).mean() < 5
        assert np.array_equal(dataset.camera_frame(e, LENGTHS[e] - 1, TOP), video[-1])  # a seek gives the same frame


def test_frame_addresses_the_dataset_in_episode_order(written):
    root, episodes = written
    dataset = LeRobotDataset(root)
    frame = dataset.frame(LENGTHS[0] + 2)  # episode 1, frame 2
    assert frame["episode_index"] == 1 and frame["frame_index"] == 2 and frame["index"] == LENGTHS[0] + 2
    assert np.array_equal(frame["observation.state"], episodes[1].features["observation.state"][2])
    assert np.array_equal(frame[WRIST], episodes[1].features[WRIST][2])
    assert psnr(frame[TOP], episodes[1].features[TOP][2]) > 30
    assert frame["task"] == TASKS[1]
    with pytest.raises(IndexError):
        dataset.frame(sum(LENGTHS))


def test_cached_frames_equal_decoded_ones(written):
    root, _ = written
    plain, cached = LeRobotDataset(root), LeRobotDataset(root, cache_frames=True)
    for key in (TOP, WRIST):
        assert np.array_equal(cached.camera_frame(1, 3, key), plain.camera_frame(1, 3, key))  # decodes episode 1
        assert np.array_equal(cached.camera_frames(1, key), plain.camera_frames(1, key))
        assert np.array_equal(cached.camera_frame(1, 6, key), plain.camera_frame(1, 6, key))


def test_episodes_share_one_video_file_and_are_located_by_their_timestamps(written):
    root, episodes = written
    dataset = LeRobotDataset(root)
    paths = {e.videos[TOP].path for e in dataset.episodes}
    assert paths == {root / "videos" / TOP / "chunk-000" / "file-000.mp4"}
    starts = [e.videos[TOP].start for e in dataset.episodes]
    ends = [e.videos[TOP].end for e in dataset.episodes]
    assert starts == pytest.approx([0.0, 0.5, 1.2]) and ends == pytest.approx([0.5, 1.2, 1.6])
    references = [(e, t, f) for e, ep in enumerate(episodes) for t, f in enumerate(ep.features[TOP])]
    for e in range(len(episodes)):
        for t, frame in enumerate(dataset.camera_frames(e, TOP)):
            nearest = min(references, key=lambda r: np.abs(r[2].astype(int) - frame).sum())
            assert nearest[:2] == (e, t)


def test_a_segment_of_a_long_gop_video_decodes_from_the_key_frame_before_it(tmp_path):
    path = write_counter_video(tmp_path / "counter.mp4", n_frames=40, fps=FPS, gop=16)
    video = VideoFile(path)
    assert len(video.times()) == 40 and video.count(1.3, 2.0, FPS) == 7 and video.count(3.5, 4.5, FPS) == 5
    slots = video.segment(2.1, 2.5, FPS)
    assert [frame_index(Image.fromarray(s)) for s in slots] == [21, 22, 23, 24]
    assert video.segment(3.8, 4.2, FPS)[2:] == [None, None]  # past the end: empty slots, counted by the caller


def test_video_files_roll_over_by_size_and_chunks_by_file_count(tmp_path):
    episodes = make_episodes()
    root = write_dataset(tmp_path / "ds", episodes, FPS, FEATURES, video_files_size_in_mb=1e-6,
                         data_files_size_in_mb=1e-6, chunks_size=2)
    dataset = LeRobotDataset(root)
    videos = [e.videos[TOP] for e in dataset.episodes]
    assert [v.path.relative_to(root).as_posix() for v in videos] == [
        f"videos/{TOP}/chunk-000/file-000.mp4", f"videos/{TOP}/chunk-000/file-001.mp4",
        f"videos/{TOP}/chunk-001/file-000.mp4"]
    assert [v.start for v in videos] == [0.0, 0.0, 0.0]
    assert [e.data_path.relative_to(root).as_posix() for e in dataset.episodes] == [
        "data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet", "data/chunk-001/file-000.parquet"]
    for e, episode in enumerate(episodes):
        assert np.array_equal(dataset.episode(e)["action"], episode.features["action"])
        assert psnr(dataset.camera_frames(e, TOP), episode.features[TOP]) > 30


# ------------------------------------------------------------------------------------------- layout and schema


def test_written_dataset_has_the_v3_layout(written):
    root, _ = written
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet",
                     "meta/info.json", "meta/stats.json", "meta/tasks.parquet",
                     f"videos/{TOP}/chunk-000/file-000.mp4"]


def test_info_json_follows_the_v3_schema(written):
    root, _ = written
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "toy"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert info["chunks_size"] == 1000 and info["splits"] == {"train": "0:3"}
    assert info["data_files_size_in_mb"] == 100 and info["video_files_size_in_mb"] == 200
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert list(info["features"]) == [*FEATURES, "timestamp", "frame_index", "episode_index", "index", "task_index"]
    for key, feature in info["features"].items():
        assert {"dtype", "shape", "names"} <= set(feature), key
    assert info["features"]["observation.state"]["names"] == ["x", "y", "gripper"]
    assert info["features"]["index"] == {"dtype": "int64", "shape": [1], "names": None, "fps": float(FPS)}
    video = info["features"][TOP]
    assert video["shape"] == [SIZE, SIZE, 3] and video["names"] == ["height", "width", "channels"]
    assert video["info"] == {"video.height": SIZE, "video.width": SIZE, "video.codec": default_codec(),
                             "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": float(FPS),
                             "video.channels": 3, "has_audio": False}


def test_parquet_files_follow_the_v3_schema(written):
    root, _ = written
    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    assert data.column_names == ["observation.state", "action", WRIST, "timestamp", "frame_index",
                                 "episode_index", "index", "task_index"]
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 3)
    assert data.schema.field(WRIST).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert data.schema.field("timestamp").type == pa.float32()
    assert data.column("index").to_pylist() == list(range(sum(LENGTHS)))
    episodes = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [(e["episode_index"], e["length"], e["tasks"]) for e in episodes] == [
        (0, 5, [TASKS[0]]), (1, 7, [TASKS[1]]), (2, 4, [TASKS[0]])]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 5), (5, 12), (12, 16)]
    assert {"data/chunk_index", "data/file_index", f"videos/{TOP}/chunk_index", f"videos/{TOP}/file_index",
            f"videos/{TOP}/from_timestamp", f"videos/{TOP}/to_timestamp", "meta/episodes/chunk_index",
            "meta/episodes/file_index", "stats/action/mean", "stats/action/q99"} <= set(episodes[0])
    tasks = pq.read_table(root / "meta" / "tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0, 1], "task": list(TASKS)}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas: the task is the index


def test_stats_json_holds_exact_statistics(written):
    root, episodes = written
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert set(stats) == {*FEATURES, "timestamp", "frame_index", "episode_index", "index", "task_index"}
    actions = np.concatenate([e.features["action"] for e in episodes]).astype(np.float64)
    entry = stats["action"]
    assert {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"} <= set(entry)
    assert entry["count"] == [sum(LENGTHS)]
    assert entry["q01"] == np.quantile(actions, 0.01, axis=0).tolist()
    assert entry["q99"] == np.quantile(actions, 0.99, axis=0).tolist()
    assert entry["mean"] == actions.mean(axis=0).tolist() and entry["std"] == actions.std(axis=0).tolist()
    wrist = np.concatenate([e.features[WRIST] for e in episodes]).reshape(-1, 3) / 255.0
    assert np.asarray(stats[WRIST]["mean"]).shape == (3, 1, 1)
    # cameras: combined from per-episode statistics (pooled variance), equal to the statistics of all frames
    assert np.allclose(np.asarray(stats[WRIST]["mean"]).reshape(3), wrist.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(np.asarray(stats[WRIST]["std"]).reshape(3), wrist.std(axis=0), rtol=0, atol=1e-12)
    assert np.asarray(stats[WRIST]["max"]).reshape(3).tolist() == wrist.max(axis=0).tolist()
    assert stats[WRIST]["count"] == [sum(LENGTHS)]
    assert stats["frame_index"]["max"] == [6.0]


def test_a_string_or_matrix_column_of_another_writer_is_read(written, tmp_path):
    root = copy_of(written, tmp_path)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    notes = [f"note {i}" for i in range(len(table))]
    pose = pa.array([[[i, i + 1], [i + 2, i + 3]] for i in range(len(table))], pa.list_(pa.list_(pa.float64())))
    pq.write_table(table.append_column("note", pa.array(notes)).append_column("pose", pose), path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["note"] = {"dtype": "string", "shape": [1], "names": None}
    info["features"]["pose"] = {"dtype": "float64", "shape": [2, 2], "names": None}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    episode = LeRobotDataset(root).episode(1)
    assert episode["note"].tolist() == notes[5:12]
    assert episode["pose"].shape == (7, 2, 2) and episode["pose"][0].tolist() == [[5, 6], [7, 8]]


# ------------------------------------------------------------------------------------------------ normaliser


STATS = {"observation.state": {"q01": [-1.0, 0.0, 0.0], "q99": [3.0, 10.0, 1.0], "mean": [1.0, 2.0, 0.5],
                               "std": [2.0, 4.0, 0.5], "min": [-2.0, -10.0, 0.0], "max": [6.0, 10.0, 1.0]}}


GRIPPER = {"observation.state": [-1]}


def test_release_default_passes_the_action_gripper_and_normalises_the_whole_proprio():
    stats = {"observation.state": STATS["observation.state"], "action": STATS["observation.state"]}
    norm = Normalizer(stats)
    x = np.array([1.0, 5.0, 0.7])
    assert norm.normalize("action", x)[2] == 0.7
    assert norm.normalize("observation.state", x)[2] == 2 * 0.7 / (1 + 1e-8) - 1
    assert norm.to_json()["features"]["action"]["gripper_dims"] == [2]
    assert norm.to_json()["features"]["observation.state"]["gripper_dims"] == []


def test_quantile_normalisation_maps_q01_q99_to_minus_one_one_and_passes_the_gripper():
    norm = Normalizer(STATS, keys=["observation.state"], gripper_dims=GRIPPER)
    x = np.array([[1.0, 5.0, 0.7], [-5.0, 20.0, 0.3], [-1.0, 10.0, 2.0]])
    y = norm.normalize("observation.state", x)
    expected = np.array([[2 * 2 / (4 + 1e-8) - 1, 2 * 5 / (10 + 1e-8) - 1, 0.7],
                         [-1.0, 1.0, 0.3],  # clipped, as the release does
                         [-1.0, 2 * 10 / (10 + 1e-8) - 1, 2.0]])
    assert np.array_equal(y, expected)
    back = norm.unnormalize("observation.state", y)
    assert np.allclose(back[0], x[0], rtol=0, atol=1e-12) and back[0, 2] == 0.7
    assert np.array_equal(norm.unnormalize("observation.state", np.array([5.0, -7.0, 0.9])),
                          np.array([3.0 + 1e-8, 0.0, 0.9]))  # clipped to [-1, 1] first


def test_mean_std_and_min_max_modes_and_all_dimensions():
    x = np.array([3.0, 6.0, 1.0])
    mean_std = Normalizer(STATS, mode="mean_std", keys=["observation.state"], gripper_dims={})
    assert np.array_equal(mean_std.normalize("observation.state", x),
                          np.array([2 / (2 + 1e-8), 4 / (4 + 1e-8), 0.5 / (0.5 + 1e-8)]))
    min_max = Normalizer(STATS, mode="min_max", keys=["observation.state"], gripper_dims=GRIPPER)
    assert np.array_equal(min_max.normalize("observation.state", x),
                          np.array([2 * 5 / (8 + 1e-8) - 1, 2 * 16 / (20 + 1e-8) - 1, 1.0]))
    with pytest.raises(UserInputError, match="mode 'bounds'"):
        Normalizer(STATS, mode="bounds", keys=["observation.state"])


def test_normaliser_takes_torch_tensors_and_round_trips_through_json():
    norm = Normalizer(STATS, keys=["observation.state"], gripper_dims=GRIPPER)
    x = np.array([[0.5, 2.5, 0.25]], dtype=np.float32)
    y = norm.normalize("observation.state", torch.from_numpy(x))
    assert y.dtype == torch.float32 and torch.equal(y, torch.from_numpy(norm.normalize("observation.state", x)))
    again = Normalizer.from_json(json.loads(json.dumps(norm.to_json())))
    assert again.to_json() == norm.to_json() and again.to_json()["features"]["observation.state"]["gripper_dims"] == [2]
    assert np.array_equal(again.normalize("observation.state", x), norm.normalize("observation.state", x))
    with pytest.raises(UserInputError, match="norm_stats.json"):
        Normalizer.from_json({"mode": "quantile"}, where="norm_stats.json")


# ------------------------------------------------------------------------------------------------ action chunks


def test_action_chunks_are_padded_with_the_last_action_and_masked_at_episode_ends(written):
    root, episodes = written
    dataset = LeRobotDataset(root)
    norm = Normalizer(dataset.stats)
    chunks = ActionChunkDataset(dataset, chunk_size=4, normalizer=norm)
    assert len(chunks) == sum(LENGTHS) and chunks.skipped == []
    item = chunks[3]  # episode 0 (5 frames), frame 3: frames 3, 4, then two pads
    actions = norm.normalize("action", episodes[0].features["action"].astype(np.float32))
    assert item["actions"].dtype == torch.float32 and item["actions"].shape == (4, 2)
    assert torch.equal(item["actions"], torch.from_numpy(actions[[3, 4, 4, 4]]))
    assert item["action_mask"].tolist() == [True, True, False, False]
    state = norm.normalize("observation.state", episodes[0].features["observation.state"][3])
    assert item["state"].dtype == torch.float32 and torch.equal(item["state"], torch.from_numpy(state))
    assert item["task"] == TASKS[0]
    assert [im.size for im in item["images"]] == [(SIZE, SIZE), (SIZE, SIZE)]
    assert all(isinstance(im, Image.Image) for im in item["images"])
    assert np.array_equal(np.asarray(item["images"][1]), episodes[0].features[WRIST][3])
    first = chunks[LENGTHS[0]]  # episode 1, frame 0: a full chunk
    assert first["action_mask"].all() and first["task"] == TASKS[1]
    only_top = ActionChunkDataset(dataset, 2, norm, cameras=[TOP])
    assert len(only_top[0]["images"]) == 1
    with pytest.raises(UserInputError, match="no camera 'observation.images.side'"):
        ActionChunkDataset(dataset, 2, norm, cameras=["observation.images.side"])


def test_chunks_survive_pickling_for_data_loader_workers(written):
    import pickle

    dataset = LeRobotDataset(written[0])
    chunks = ActionChunkDataset(dataset, 4, Normalizer(dataset.stats))
    again = pickle.loads(pickle.dumps(chunks))
    a, b = chunks[8], again[8]
    assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["state"], b["state"])
    assert [np.asarray(i).tolist() for i in a["images"]] == [np.asarray(i).tolist() for i in b["images"]]


# ------------------------------------------------------------------------------------------------ inspection


def test_inspect_summarises_the_dataset(written):
    root, _ = written
    summary = inspect_dataset(root)
    data = json.loads(json.dumps(summary.as_dict()))
    assert (data["episodes"], data["frames"], data["fps"], data["robot_type"]) == (3, 16, FPS, "toy")
    assert data["features"]["observation.state"] == {"dtype": "float32", "shape": [3]}
    assert data["cameras"] == {TOP: {"dtype": "video", "shape": [SIZE, SIZE, 3], "codec": default_codec()},
                               WRIST: {"dtype": "image", "shape": [SIZE, SIZE, 3], "codec": None}}
    assert data["tasks"] == list(TASKS) and data["truncated"] == []
    text = summary.render()
    for needle in ("episodes: 3", "frames: 16", "fps: 10", "observation.state", "[3]", TASKS[1],
                   f"{TOP} (video", "truncated episodes: 0"):
        assert needle in text, needle


def _drop_rows(path, episode: int, n: int) -> None:
    """Rewrite a data file without the last ``n`` frames of ``episode``."""
    table = pq.read_table(path)
    keep = np.ones(len(table), dtype=bool)
    rows = np.flatnonzero(table.column("episode_index").to_numpy() == episode)
    keep[rows[-n:]] = False
    pq.write_table(table.filter(pa.array(keep)), path)


def test_truncated_data_is_counted_reported_and_left_out_of_chunks(written, tmp_path):
    root = copy_of(written, tmp_path)
    _drop_rows(root / "data" / "chunk-000" / "file-000.parquet", episode=1, n=2)
    dataset = LeRobotDataset(root)
    assert [(t.episode, t.expected, t.found) for t in dataset.truncated] == [(1, 7, 5)]
    assert len(dataset) == sum(LENGTHS) - 2
    summary = inspect_dataset(root)
    assert summary.frames == 14 and summary.expected_frames == 16
    assert summary.truncated == [{"episode": 1, "file": str(root / "data" / "chunk-000" / "file-000.parquet"),
                                  "expected": 7, "found": 5}]
    assert "truncated episodes: 1" in summary.render() and "has 5 of its 7 frames" in summary.render()
    chunks = ActionChunkDataset(dataset, 4, Normalizer(dataset.stats))
    assert chunks.skipped == [1] and len(chunks) == LENGTHS[0] + LENGTHS[2]


def test_truncated_video_is_counted(written, tmp_path):
    root = copy_of(written, tmp_path)
    path = root / "videos" / TOP / "chunk-000" / "file-000.mp4"
    frames = VideoFile(path).segment(0.0, sum(LENGTHS) / FPS, FPS)
    writer = VideoWriter(path, FPS, "h264")
    writer.add(np.stack(frames[:-3]))  # the last episode (4 frames) loses 3
    writer.close()
    summary = inspect_dataset(root)
    assert summary.truncated == [{"episode": 2, "file": str(path), "expected": 4, "found": 1}]
    with pytest.raises(UserInputError, match=f"{path}: episode 2 has no frame 1"):
        LeRobotDataset(root).camera_frames(2, TOP)


# ------------------------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize("relative", ["meta/info.json", "meta/stats.json", "meta/tasks.parquet",
                                      "meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet"])
def test_a_missing_file_is_named(written, tmp_path, relative):
    root = copy_of(written, tmp_path)
    (root / relative).unlink()
    with pytest.raises(UserInputError, match=str(root / "meta" / "episodes") if "episodes" in relative
                       else f"{root / relative}: missing"):
        inspect_dataset(root)


@pytest.mark.parametrize("relative", ["meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                                      "data/chunk-000/file-000.parquet"])
def test_a_corrupt_parquet_file_is_named(written, tmp_path, relative):
    root = copy_of(written, tmp_path)
    (root / relative).write_bytes(b"not parquet at all")
    with pytest.raises(UserInputError, match=f"{root / relative}: not a readable parquet file"):
        inspect_dataset(root)


def test_malformed_meta_json_is_named_with_its_line(written, tmp_path):
    root = copy_of(written, tmp_path)
    info = root / "meta" / "info.json"
    info.write_text('{\n  "codebase_version": "v3.0",\n  "fps": ,\n}')
    with pytest.raises(UserInputError, match=f"{info}: not valid JSON \\(line 3"):
        inspect_dataset(root)
    info.write_text(json.dumps({"codebase_version": "v3.0", "fps": 10}))
    with pytest.raises(UserInputError, match=f"{info}: missing field\\(s\\) features"):
        inspect_dataset(root)
    info.write_text(json.dumps({**json.loads((written[0] / "meta" / "info.json").read_text()),
                                "codebase_version": "v2.1"}))
    with pytest.raises(UserInputError, match="'v2.1' is not LeRobot v3"):
        inspect_dataset(root)


def test_a_missing_or_corrupt_video_is_named(written, tmp_path):
    root = copy_of(written, tmp_path)
    video = root / "videos" / TOP / "chunk-000" / "file-000.mp4"
    video.write_bytes(b"\x00" * 64)
    with pytest.raises(UserInputError, match=f"{video}: not a readable video"):
        inspect_dataset(root)
    video.unlink()
    with pytest.raises(UserInputError, match=f"{video}: missing"):
        inspect_dataset(root)
    assert issubclass(UserInputError, VlaserError)


def test_a_corrupt_image_is_named(written, tmp_path):
    root = copy_of(written, tmp_path)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    images = table.column(WRIST).to_pylist()
    images[0] = {"bytes": b"garbage", "path": None}
    pq.write_table(table.set_column(table.column_names.index(WRIST), WRIST,
                                    pa.array(images, table.schema.field(WRIST).type)), path)
    with pytest.raises(UserInputError, match=f"{path}: a '{WRIST}' image does not decode"):
        inspect_dataset(root)


def test_writer_rejects_bad_episodes(tmp_path):
    episodes = make_episodes(lengths=(3,))
    episodes[0].features["action"] = np.zeros((2, 2), np.float32)
    with pytest.raises(UserInputError, match="episode 0: 'action' has shape \\(2, 2\\), expected \\(3, 2\\)"):
        write_dataset(tmp_path / "a", episodes, FPS, FEATURES)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(UserInputError, match="not empty"):
        write_dataset(tmp_path / "b", make_episodes(lengths=(3,)), FPS, FEATURES)


def test_features_are_inferred_from_the_first_episode(tmp_path):
    episodes = make_episodes(lengths=(3, 2))
    dataset = LeRobotDataset(write_dataset(tmp_path / "ds", episodes, FPS, camera_dtype="image"))
    assert dataset.features["action"] == {"dtype": "float32", "shape": [2], "names": None, "fps": float(FPS)}
    assert dataset.features[TOP]["dtype"] == "image" and dataset.cameras == [TOP, WRIST]
    assert np.array_equal(dataset.camera_frames(1, TOP), episodes[1].features[TOP])
