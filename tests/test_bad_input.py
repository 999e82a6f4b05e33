"""Every bad input of issue 2 point 10: one clear line, exit status 2, nothing half-written."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from engine.cli import evaluate, train
from helpers import with_, write_cfg
from test_cli import _tiny


def run_train(args, capsys):
    rc = train.main(args + ["--quiet"])
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_user_error(rc, err, needle):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), lines[0]


def _img(path, size=(40, 40), mode="RGB"):
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype("uint8")
    Image.fromarray(arr).convert(mode).save(path)


def _cfg(tmp_path, **dotted):
    return write_cfg(tmp_path, with_(_tiny(), **dotted))


def test_unknown_method(tmp_path, capsys):
    rc, err = run_train(["--method", "nope", "--data", "shapes", "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "unknown method 'nope'")
    assert not (tmp_path / "r").exists()


def test_unknown_config_key(tmp_path, capsys):
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--out", str(tmp_path / "r"),
                         "--set", "optim.lrr=1"], capsys)
    assert_user_error(rc, err, "unknown config key 'optim.lrr'")


def test_out_of_range_value(tmp_path, capsys):
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--out", str(tmp_path / "r"),
                         "--set", "params.temperature=-2"], capsys)
    assert_user_error(rc, err, "params.temperature")


def test_missing_data_path(tmp_path, capsys):
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--data", str(tmp_path / "nowhere"),
                         "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "nowhere")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--data", str(tmp_path / "empty"),
                         "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "empty")
    # nothing half-written: no checkpoint, the summary says failed
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_folder_without_images(tmp_path, capsys):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--data", str(d), "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "no images")


def test_all_images_corrupt(tmp_path, capsys):
    d = tmp_path / "bad" / "cls"
    d.mkdir(parents=True)
    for i in range(3):
        (d / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--data", str(tmp_path / "bad"),
                         "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "could be decoded")


def _folder(root, n_per_class=20, size=(40, 40), modes=("RGB",)):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            _img(root / c / f"{i}.png", size, modes[i % len(modes)])


def test_corrupt_images_skipped_with_count_and_modes_converted(tmp_path, capsys):
    root = tmp_path / "mixed"
    _folder(root, modes=("RGB", "L", "RGBA", "P"))
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    _img(root / "b" / "large.png", (64, 48))  # another size: resized and cropped, with a note
    cfg = _cfg(tmp_path, **{"train.batch_size": 8, "train.steps": 2, "aug.global_crops.size": 32,
                            "data.image_size": None})
    rc, err = run_train(["--config", str(cfg), "--data", str(root), "--out", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    # every note of the loader reaches the command line (they were only shown in the studio)
    assert "1 unreadable image(s) skipped (e.g. a/broken.jpg" in err, err
    assert "different sizes" in err, err


def test_images_smaller_than_the_crop(tmp_path, capsys):
    root = tmp_path / "small"
    _folder(root, size=(16, 16))
    cfg = _cfg(tmp_path, **{"train.batch_size": 8, "aug.global_crops.size": 32})
    rc, err = run_train(["--config", str(cfg), "--data", str(root), "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "16 px")


def test_output_folder_holds_another_run(tmp_path, capsys):
    cfg = _cfg(tmp_path, **{"train.steps": 2})
    out = tmp_path / "r"
    assert run_train(["--config", str(cfg), "--out", str(out)], capsys)[0] == 0
    before = (out / "metrics.jsonl").read_text()
    rc, err = run_train(["--config", str(cfg), "--out", str(out)], capsys)
    assert_user_error(rc, err, "already holds a run")
    assert (out / "metrics.jsonl").read_text() == before  # untouched
    rc, err = run_train(["--config", str(cfg), "--out", str(out), "--overwrite"], capsys)
    assert rc == 0, err


def test_missing_checkpoint(tmp_path, capsys):
    cfg = _cfg(tmp_path, **{"train.steps": 2})
    out = tmp_path / "r"
    assert run_train(["--config", str(cfg), "--out", str(out)], capsys)[0] == 0
    (out / "checkpoints" / "last.pt").unlink()
    rc, err = run_train(["--resume", str(out), "--steps", "4"], capsys)
    assert_user_error(rc, err, "checkpoint not found")
    assert evaluate.main(["knn", "--run", str(out)]) == 2


def test_truncated_checkpoint(tmp_path, capsys):
    cfg = _cfg(tmp_path, **{"train.steps": 2})
    out = tmp_path / "r"
    assert run_train(["--config", str(cfg), "--out", str(out)], capsys)[0] == 0
    ck = out / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    rc, err = run_train(["--resume", str(out), "--steps", "4"], capsys)
    assert_user_error(rc, err, "truncated or corrupt")


def test_resume_with_incompatible_config(tmp_path, capsys):
    cfg = _cfg(tmp_path, **{"train.steps": 2})
    out = tmp_path / "r"
    assert run_train(["--config", str(cfg), "--out", str(out)], capsys)[0] == 0
    rc, err = run_train(["--resume", str(out), "--steps", "4", "--set", "params.proj_out=64"], capsys)
    assert_user_error(rc, err, "params.proj_out")


def test_no_args_for_out(capsys):
    rc, err = run_train(["--method", "simclr", "--data", "shapes"], capsys)
    assert_user_error(rc, err, "--out")


def test_bad_yaml_config(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("method: [unclosed\n")
    rc, err = run_train(["--config", str(p), "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "not valid YAML")


def test_yaml_config_with_a_key_given_twice(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("method: simclr\ntrain: {steps: 5}\noptim: {lr: 0.1, lr: 0.2}\n")
    rc, err = run_train(["--config", str(p), "--out", str(tmp_path / "r")], capsys)
    assert_user_error(rc, err, "line 3")
    assert "the key 'lr' appears twice" in err and not (tmp_path / "r").exists()


def test_tar_of_16bit_and_palette_images(tmp_path, capsys):
    """A .tar.gz of a class-folder dataset with unusual modes trains after conversion."""
    buf = tmp_path / "ds.tar.gz"
    with tarfile.open(buf, "w:gz") as tf:
        for c in ("a", "b"):
            for i in range(10):
                arr = (np.random.default_rng(i).random((36, 36)) * 65535).astype("uint16")
                im = Image.fromarray(arr) if i % 2 else Image.fromarray((arr >> 8).astype("uint8")).convert("P")
                b = io.BytesIO()
                im.save(b, format="PNG")
                info = tarfile.TarInfo(f"ds/{c}/{i}.png")
                info.size = len(b.getvalue())
                tf.addfile(info, io.BytesIO(b.getvalue()))
    cfg = _cfg(tmp_path, **{"train.batch_size": 8, "train.steps": 2, "aug.global_crops.size": 32})
    rc, err = run_train(["--config", str(cfg), "--data", str(buf), "--out", str(tmp_path / "r")], capsys)
    assert rc == 0, err


def test_output_folder_that_cannot_be_created(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    rc, err = run_train(["--method", "simclr", "--data", "shapes", "--steps", "1",
                         "--out", str(tmp_path / "afile" / "run")], capsys)
    assert_user_error(rc, err, "cannot create the run folder")


@pytest.mark.parametrize("preset,too_few", [
    ("simclr_cifar", 1), ("moco_v1_cifar", 1), ("moco_v2_cifar", 1), ("moco_v3_cifar", 1), ("byol_cifar", 1),
    ("simsiam_cifar", 1), ("barlow_twins_cifar", 1), ("swav_cifar", 1), ("dino_cifar", 0), ("mae_small", 0),
    ("simmim_small", 0), ("beit_small", 0),
])
def test_too_few_views_for_the_method_is_a_config_error(preset, too_few):
    """Each method says how many views it needs (a clear ConfigError, exit 2 in the CLI), instead of
    failing inside its first step with an IndexError."""
    from engine.config import validate_config
    from engine.errors import ConfigError
    from engine.methods import create_method
    from engine.presets import load_preset

    raw = with_(load_preset(preset), **{"aug.global_crops.count": too_few, "aug.local_crops.count": 0})
    with pytest.raises(ConfigError, match="aug.global_crops.count|crops"):
        create_method(validate_config(raw), 32)


def test_a_run_that_failed_before_its_first_step_does_not_block_the_retry(tmp_path, capsys):
    """Bad data leaves a record of the failure, but nothing to resume: the corrected command
    reuses the folder without --overwrite, and --resume says why it cannot continue."""
    out = tmp_path / "run"
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--data", str(tmp_path / "no-such-folder"),
                         "--out", str(out)], capsys)
    assert_user_error(rc, err, "does not exist")
    assert (out / "run.json").is_file()
    rc, err = run_train(["--resume", str(out)], capsys)
    assert_user_error(rc, err, "before its first step")
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--out", str(out), "--steps", "1"], capsys)
    assert rc == 0, err
    assert (out / "checkpoints" / "last.pt").is_file()
    # a run that trained is still protected
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--out", str(out), "--steps", "1"], capsys)
    assert_user_error(rc, err, "already holds a run")


def test_resuming_a_run_that_is_already_past_the_requested_length_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    rc, err = run_train(["--config", str(_cfg(tmp_path)), "--out", str(out), "--steps", "3"], capsys)
    assert rc == 0, err
    before = [(p.name, p.read_bytes()) for p in sorted(out.glob("*")) if p.is_file() and p.name != "run.lock"]
    for steps in ("3", "2"):
        rc, err = run_train(["--resume", str(out), "--steps", steps], capsys)
        assert_user_error(rc, err, "already at step 3")
    after = [(p.name, p.read_bytes()) for p in sorted(out.glob("*")) if p.is_file() and p.name != "run.lock"]
    assert after == before  # config.yaml, metrics.jsonl, run.json untouched
    rc, err = run_train(["--resume", str(out), "--steps", "4"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("argv", [
    ["train", "--bogus"], ["train", "--steps", "1", "--epochs", "1"], ["evaluate", "knn", "--run", "x", "--k", "0"],
    ["export", "--run", "x", "--format", "onnx", "--out", "y"], ["evaluate"],
])
def test_argument_errors_are_one_line_with_status_2(argv, capsys):
    from engine.cli import export as export_cli

    main = {"train": train.main, "evaluate": evaluate.main, "export": export_cli.main}[argv[0]]
    with pytest.raises(SystemExit) as e:
        main(argv[1:])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
