"""Shared test setup: Qt offscreen, small torch thread count, tiny configs."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: on a 2-core CI machine the training thread shares the cores with the
# Qt GUI thread, and OpenMP's spin-waiting under contention made steps up to 7x slower.
TEST_THREADS = int(os.environ.get("SSL_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _test_threads():
    """Every test starts with TEST_THREADS intra-op threads, whatever an earlier test or an
    imported module set: a stray ``torch.set_num_threads(2)`` at the top of one test module
    put every test of both xdist workers on 2 threads each (4 on 2 cores), and tests ran 2-3x
    slower under OpenMP contention."""
    torch.set_num_threads(TEST_THREADS)
    yield


def pytest_addoption(parser):
    parser.addoption("--learning-extended", action="store_true",
                     help="also run the longer learning checks (make test-learning)")


def pytest_collection_modifyitems(config, items):
    """``slow`` tests go first (pytest-xdist then starts the longest ones at once instead of
    leaving one worker alone with them at the end), and ``learning_extended`` tests (minutes of
    CPU each) run with --learning-extended only:
    ``make test`` must stay under 5 minutes on 2 cores; ``make test-learning`` runs them."""
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: otherwise in order
    if config.getoption("--learning-extended"):
        return
    skip = pytest.mark.skip(reason="longer learning check: run make test-learning (--learning-extended)")
    for item in items:
        if "learning_extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_cfg_dict():
    """A SimCLR config that trains in seconds on the CPU (32 px shapes, small batch)."""
    return {
        "method": "simclr",
        "data": {"source": "shapes", "shapes_size": 32, "shapes_train": 256, "shapes_test": 128},
        "model": {"arch": "resnet18", "cifar_stem": False},
        "aug": {"global_crops": {"count": 2, "size": 32, "scale": [0.3, 1.0]}},
        "optim": {"optimizer": "adamw", "lr": 1e-3, "scale_lr": False, "warmup_epochs": 0},
        "train": {"steps": 6, "batch_size": 32, "device": "cpu", "log_every": 1, "eval_every": 0,
                  "probe_every_s": 1000},
        "eval": {"max_bank": 256, "max_queries": 128},
    }
