"""vlaser leaves no global state behind: no registration into transformers' tables on import, no images left in
the system's temp folder by a run."""

import os
import subprocess
import sys

import pytest

from vlaser.quickstart.scenes import write_mmsi

#: Imports every vlaser module and prints whether transformers' global tables changed.
_IMPORT_ALL = """
import importlib, pkgutil
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from transformers.models.auto import configuration_auto, modeling_auto, tokenization_auto

def tables():
    mappings = [configuration_auto.CONFIG_MAPPING, tokenization_auto.TOKENIZER_MAPPING,
                modeling_auto.MODEL_MAPPING, modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING]
    extra = [sorted(map(str, getattr(m, "_extra_content", {}))) for m in mappings]
    return extra, sorted(AttentionInterface._global_mapping), sorted(AttentionMaskInterface._global_mapping)

before = tables()
import vlaser
names = [m.name for m in pkgutil.walk_packages(vlaser.__path__, "vlaser.") if m.name != "vlaser.__main__"]
for name in names:
    importlib.import_module(name)
print(len(names), before == tables())
"""


@pytest.mark.slow
def test_importing_every_module_registers_nothing_in_transformers():
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, unchanged = proc.stdout.split()
    assert int(count) > 30 and unchanged == "True"


@pytest.mark.slow
def test_parquet_images_are_gone_when_the_run_ends(tmp_path):
    pytest.importorskip("pyarrow")
    data = write_mmsi(tmp_path / "mmsi", n=3)
    temp = tmp_path / "temp"
    temp.mkdir()
    script = ("import sys\nfrom pathlib import Path\nfrom vlaser.eval.benchmark import get_benchmark\n"
              "items = get_benchmark('mmsi_bench').load(Path(sys.argv[1]))\n"
              "assert items and all(Path(p).is_file() for item in items for p in item.images)\n"
              "print(Path(items[0].images[0]).parent.parent)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(data)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = proc.stdout.strip()
    assert folder.startswith(str(temp)) and "vlaser-parquet-" in folder  # the images were in this run's folder
    assert list(temp.iterdir()) == []  # and the folder went with the process
