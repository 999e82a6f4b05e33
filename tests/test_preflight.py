"""engine.preflight: a method's own checks of a setup, before any data, weights or device.

The studio disables Start with these reasons and the trainer refuses a bad setup before it
loads the data, so the checks must (a) accept every shipped preset, (b) refuse exactly what the
real build refuses, with the same message."""

from pathlib import Path

import pytest
import torch

from engine.config import validate_config
from engine.errors import ConfigError, UserError
from engine.methods import create_method
from engine.preflight import known_image_size, preflight
from engine.presets import list_presets, load_preset
from helpers import with_
from test_cli import _tiny


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_passes_at_its_size(name):
    cfg = validate_config(load_preset(name))
    size = cfg.data.image_size or known_image_size(cfg.data)  # the ImageNet presets' 224 px
    preflight(cfg, size)  # raises nothing: neither a refusal nor an op the meta device cannot run


@pytest.mark.parametrize("name", ["mae", "moco_v1"])  # a ViT-B with its decoder; a queue
def test_the_check_allocates_nothing(name, monkeypatch):
    import engine.methods as methods

    built = []
    orig = methods.create_method
    monkeypatch.setattr(methods, "create_method", lambda *a: built.append(orig(*a)) or built[-1])
    preflight(validate_config(load_preset(name)), 224)
    assert all(t.is_meta for t in [*built[0].parameters(), *built[0].buffers()])  # shapes only, no memory


REFUSED = [
    ({"method": "mae"}, "MAE needs a ViT encoder"),
    ({"method": "simmim"}, "SimMIM needs a ViT or Swin encoder"),
    ({"aug.global_crops.count": 1}, "SimCLR contrasts two views"),
    ({"method": "moco_v2", "aug.global_crops.count": 1}, "MoCo matches a query view with a key view"),
    ({"model.arch": "vit_tiny", "model.patch_size": 4, "model.num_heads": 5}, "num_heads 5 does not divide"),
    ({"model.arch": "swin_tiny", "aug.global_crops.size": None, "data.shapes_size": 40}, "multiple of 32"),
    ({"model.arch": "resnet7"}, "unknown"),
    ({"method": "multimae", "model.arch": "vit_tiny", "model.patch_size": 4, "aug.global_crops.count": 0,
      "data.source": str(Path(__file__).parent), "data.image_size": 32}, "which data.source does not have"),
]


@pytest.mark.parametrize("changes,says", REFUSED, ids=[s for _, s in REFUSED])
def test_refuses_what_the_real_build_refuses_with_its_message(changes, says):
    cfg = validate_config(with_(_tiny(), **changes))
    size = known_image_size(cfg.data)
    with pytest.raises(UserError) as real:
        create_method(cfg, cfg.aug.global_crops.size or size)  # on the CPU, with weights
    with pytest.raises(UserError) as pre:
        preflight(cfg, size)
    assert says in str(pre.value) and str(pre.value) == str(real.value)


def test_crops_larger_than_the_images_name_both_sizes():
    cfg = validate_config(with_(_tiny(), **{"aug.global_crops.size": 48}))
    with pytest.raises(ConfigError, match="images are 32 px but the crops are 48 px.*data.shapes_size"):
        preflight(cfg, 32)
    # local crops count only for the methods that make them (SimCLR ignores a DINO preset's)
    ok = validate_config(with_(_tiny(), **{"aug.local_crops.count": 4, "aug.local_crops.size": 64}))
    preflight(ok, 32)
    dino = validate_config(with_(load_preset("dino_cifar"), **{"aug.local_crops.size": 64}))
    with pytest.raises(ConfigError, match="64 px \\(local\\)"):
        preflight(dino, 32)


def test_unknown_size_checks_what_it_can():
    """A folder at its native size: the method is checked only with fixed crops."""
    cfg = validate_config(with_(_tiny(), method="mae", **{"data.source": "/data/imgs"}))
    assert known_image_size(cfg.data) is None
    with pytest.raises(ConfigError, match="MAE needs a ViT"):
        preflight(cfg, None)  # the crops are 32 px
    free = validate_config(with_(_tiny(), method="mae", **{"data.source": "/data/imgs", "aug.global_crops.size": None}))
    preflight(free, None)  # nothing to build for: the run checks once the images are loaded
    assert known_image_size(validate_config(with_(_tiny(), **{"data.source": "/d", "data.image_size": 48})).data) == 48


def test_the_trainer_refuses_a_bad_setup_before_loading_the_data(tmp_path, monkeypatch):
    """A refusal must not wait for a dataset load that can take minutes."""
    import engine.trainer as trainer_mod

    def no_load(*a, **k):
        raise AssertionError("the data was loaded before the setup was checked")

    monkeypatch.setattr(trainer_mod, "load_dataset", no_load)
    cfg = validate_config(with_(_tiny(), method="mae"))
    t = trainer_mod.Trainer(cfg, str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="MAE needs a ViT"):
        t.run()
    assert t.status == "failed"


def test_the_cli_refuses_without_creating_a_run_folder(tmp_path, capsys):
    from engine.cli import train

    rc = train.main(["--method", "mae", "--data", "shapes", "--steps", "1", "--quiet",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and "MAE needs a ViT" in err[0]
    assert "or start from --preset mae, mae_small" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_check_in_a_background_thread_leaves_other_threads_on_their_device(monkeypatch):
    """The studio checks in a worker thread while the GUI thread (augmentation preview) and the
    trainer's thread make tensors: the meta device must stay inside the checking thread."""
    import threading

    import engine.methods as methods

    inside, outside = threading.Event(), threading.Event()
    orig = methods.create_method

    def slow_create(*a, **k):
        inside.set()
        outside.wait(10)
        assert torch.empty(1).is_meta  # this thread builds on meta
        return orig(*a, **k)

    monkeypatch.setattr(methods, "create_method", slow_create)
    t = threading.Thread(target=preflight, args=(validate_config(load_preset("mae_small")), 64))
    t.start()
    assert inside.wait(10)
    assert torch.empty(1).device.type == "cpu" and torch.nn.Linear(2, 2).weight.device.type == "cpu"
    outside.set()
    t.join(10)
