import os

import pytest
import torch

try:
    from hypothesis import settings
except ImportError:  # a bare Python (a GPU machine's): the property-test modules skip themselves, saying why
    settings = None
if settings is not None:
    # Property tests check values, not speed: a busy 2-core machine must not fail them on hypothesis' deadline.
    settings.register_profile("vlaser", deadline=None)
    settings.load_profile("vlaser")

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


def pytest_collection_modifyitems(config, items):
    """GPU checks run where CUDA is; elsewhere they are skipped, saying why (never silently)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine); run with pytest -m gpu on one")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `keywords`: a checkout folder named gpu is one
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory):
    from vlaser.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-original", layout="original")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    from vlaser.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hf", layout="hf")


@pytest.fixture(scope="session")
def loaded(tiny_original):
    import vlaser

    return vlaser.load_model(tiny_original, dtype=torch.float32, device="cpu")


@pytest.fixture
def umask():
    """Set the process's umask for one test (``umask(0o027)``), put back after it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def modes(root) -> dict[str, int]:
    """``relative path -> permission bits`` of ``root`` ("." ) and everything under it."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


@pytest.fixture(scope="module")
def vlm(loaded, request):
    """A ``VLM`` over the tiny model, built with the test module's ``VLM_SETTINGS`` (a dict; none: defaults)."""
    from vlaser.api import VLM

    model, tokenizer = loaded
    return VLM(model, tokenizer, **getattr(request.module, "VLM_SETTINGS", {}))
