"""Writing AV1 video says nothing on stderr: SVT-AV1's banner (~25 lines an episode, printed by the library
itself) is off unless the environment asks for it with ``SVT_LOG``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vlaser.vla.data.video import default_codec

#: two episodes into one file, as the dataset writer does; in a fresh process, since SVT-AV1 reads its log
#: level once per process
WRITE = """
import sys
from pathlib import Path
import numpy as np
from vlaser.vla.data.video import VideoWriter
writer = VideoWriter(Path(sys.argv[1]), fps=10, codec="av1")
for seed in (0, 1):
    writer.add(np.random.default_rng(seed).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
writer.close()
print("written", writer.frames)
"""


def _write(path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "SVT_LOG"} | env
    done = subprocess.run([sys.executable, "-c", WRITE, str(path)], capture_output=True, text=True, timeout=120,
                          env=environment)
    assert done.returncode == 0 and done.stdout == "written 8\n", done.stderr[-2000:]
    return done


@pytest.fixture
def av1():
    if default_codec() != "av1":
        pytest.skip("this PyAV has no AV1 encoder")


def test_av1_writing_prints_no_encoder_banner(tmp_path, av1):
    assert _write(tmp_path / "quiet.mp4").stderr == ""


@pytest.mark.slow  # a second fresh process that imports torch (through vlaser.vla.data): ~6 s here
def test_the_users_own_svt_log_level_is_kept(tmp_path, av1):
    assert "Svt[info]" in _write(tmp_path / "asked.mp4", SVT_LOG="3").stderr
