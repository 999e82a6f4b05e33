"""kNN evaluation: per-dimension feature standardisation (eval.standardize) and who turns it on."""

from __future__ import annotations

import pytest
import torch

from engine.config import validate_config
from engine.data import DataSplits, ImageSet
from engine.evaluation import fit_linear_probe, knn_evaluate, linear_probe_evaluate, standardize, standardize_features
from engine.methods import create_method, get_method
from engine.methods.base import Method
from test_cli import _tiny


def test_standardize_uses_the_bank_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(500, 6, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0, 1.0]) + 5.0
    bank[:, 5] = 2.0  # a constant dimension: no division by zero
    queries = torch.randn(40, 6, generator=g)
    zb, zq = standardize(bank, queries)
    assert torch.allclose(zb[:, :5].mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(zb[:, :5].std(0), torch.ones(5), atol=1e-4)  # eps 1e-6 in the variance
    assert torch.isfinite(zb).all() and torch.isfinite(zq).all() and (zb[:, 5] == 0).all()
    mu, sd = bank.mean(0), (bank.var(0) + 1e-6).sqrt()  # BatchNorm's sqrt(var + eps)
    assert torch.allclose(zq, (queries - mu) / sd, atol=1e-5)  # the bank's, not the queries'
    assert zq[:, 5].abs().max() < 1e4  # a dead dimension is not blown up (clamping the std at 1e-6 gave 1e6 x)


# --------------------------------------------------------- knn_evaluate end to end
N_CLASSES = 4


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 3, 8, 8]: channel 0 = 100 + 2 x class (a small, clean signal), channels 1 and
    2 = noise over the whole range (large variance, no class)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % N_CLASSES
    img = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    img[:, 0] = (100 + 2 * labels).to(torch.uint8).view(n, 1, 1)
    img[:, 1:] = torch.randint(0, 256, (n, 2, 1, 1), generator=g, dtype=torch.uint8)
    return img, labels


class MeanColour(Method):
    """A method whose features are the mean colour of the normalised image: [B, 3]."""

    name = "mean_colour_test"
    Params = get_method("simclr").Params  # the config's method is simclr

    def __init__(self, cfg, image_size: int, standardize_default: bool) -> None:
        super().__init__(cfg, image_size)
        self.backbone = torch.nn.Identity()
        self.standardize_features = standardize_default

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # [B, 3]


def _evaluate(standardize_default: bool, setting: bool | None) -> float:
    cfg = validate_config({**_tiny(), "eval": {"max_bank": 400, "max_queries": 200, "knn_k": 20,
                                               "standardize": setting}})
    tr, te = _images(400, 0), _images(200, 1)
    data = DataSplits(train=ImageSet(tr[0], tr[1], [str(c) for c in range(N_CLASSES)]),
                      test=ImageSet(te[0], te[1], [str(c) for c in range(N_CLASSES)]), name="toy", source="toy")
    acc, pca, labels = knn_evaluate(MeanColour(cfg, 8, standardize_default), data, cfg, torch.device("cpu"))
    assert pca is not None and pca.shape == (200, 2) and labels is not None
    return acc


def test_standardisation_recovers_a_small_signal_next_to_a_large_noise() -> None:
    # raw cosine similarity is decided by the noisy channel: near chance (0.25)
    assert _evaluate(False, None) < 0.5
    # z-scored, the class channel counts as much as the noise: far above chance
    assert _evaluate(True, None) > 0.8
    # eval.standardize overrides the method's choice, both ways
    assert _evaluate(False, True) > 0.8
    assert _evaluate(True, False) < 0.5


@pytest.mark.parametrize("method,expected", [
    ("mae", True), ("simmim", True), ("beit", True), ("multimae", True),
    ("simclr", False), ("moco_v2", False), ("byol", False), ("dino", False), ("swav", False)])
def test_masked_image_models_standardise_by_default(method: str, expected: bool) -> None:
    cls = get_method(method)
    assert cls.standardize_features is expected
    assert (cls.family == "masked image modelling") is expected


def test_config_setting_wins_over_the_method_default() -> None:
    base = {**_tiny(), "method": "simclr"}
    m = create_method(validate_config(base), 32)
    assert standardize_features(m, validate_config(base)) is False
    assert standardize_features(m, validate_config({**base, "eval": {"standardize": True}})) is True
    with pytest.raises(Exception, match="standardize"):
        validate_config({**base, "eval": {"standardize": "sometimes"}})


def test_cli_line_names_the_protocol(capsys) -> None:
    from engine import events as ev
    from engine.cli.train import ProgressPrinter

    printer = ProgressPrinter(quiet=True)
    printer(ev.Evaluation(40, knn_top1=0.25, knn_standardized=True))
    printer(ev.Evaluation(80, knn_top1=0.5))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["step 40: kNN top-1 0.2500 (standardised features)", "step 80: kNN top-1 0.5000"]


# ------------------------------------------------------------------- linear probe
def test_linear_probe_reads_a_linear_signal_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    y_tr, y_te = torch.randint(0, 10, (600,), generator=g), torch.randint(0, 10, (300,), generator=g)
    onehot = lambda y: torch.nn.functional.one_hot(y, 10).float()  # noqa: E731
    # the class is a direction among 54 noise dimensions of 100x its scale
    f_tr = torch.cat([onehot(y_tr), 100 * torch.randn(600, 54, generator=g)], 1)
    f_te = torch.cat([onehot(y_te), 100 * torch.randn(300, 54, generator=g)], 1)
    res = fit_linear_probe(f_tr, y_tr, f_te, y_te, 10, epochs=50)
    assert res["linear_top1"] > 0.95 and res["train_top1"] > 0.95
    # pure noise: it fits the training set, and the test set stays near chance (0.1)
    noise = fit_linear_probe(torch.randn(600, 64, generator=g), y_tr, torch.randn(300, 64, generator=g), y_te, 10,
                             epochs=50)
    assert noise["train_top1"] > 0.25 and noise["linear_top1"] < 0.2


def test_linear_probe_of_a_method_uses_its_embed_and_the_kNN_subsets() -> None:
    cfg = validate_config({**_tiny(), "eval": {"max_bank": 300, "max_queries": 100}})
    tr, te = _images(400, 0), _images(200, 1)
    names = [str(c) for c in range(N_CLASSES)]
    data = DataSplits(train=ImageSet(tr[0], tr[1], names), test=ImageSet(te[0], te[1], names), name="toy",
                      source="toy")
    m = MeanColour(cfg, 8, False)
    m.train()
    res = linear_probe_evaluate(m, data, cfg, torch.device("cpu"), epochs=100, lr=3e-2)
    assert res["n_train"] == 300 and res["n_test"] == 100 and res["epochs"] == 100
    assert res["linear_top1"] > 0.9  # four ordered levels of one small channel next to large noise
    assert m.training  # the method's mode is restored
    unlabeled = DataSplits(train=ImageSet(tr[0], None, []), test=None, name="toy", source="toy")
    assert linear_probe_evaluate(m, unlabeled, cfg, torch.device("cpu")) is None


# the linear probe standardises with the TRAINING features' statistics only
def test_linear_probe_scores_a_one_class_test_set() -> None:
    from engine.evaluation import fit_linear_probe

    g = torch.Generator().manual_seed(0)
    y_tr = torch.randint(0, 4, (400,), generator=g)
    onehot = lambda y: torch.nn.functional.one_hot(y, 4).float()  # noqa: E731
    f_tr = torch.cat([onehot(y_tr), torch.randn(400, 8, generator=g)], 1)
    y_te = torch.full((50,), 3)  # one class only: its own statistics would wipe out the class signal
    f_te = torch.cat([onehot(y_te), torch.randn(50, 8, generator=g)], 1)
    res = fit_linear_probe(f_tr, y_tr, f_te, y_te, 4, epochs=30)
    assert res["linear_top1"] > 0.95, res
    assert res["train_top1"] > 0.95, res


# the evaluation's queries are TEST images, the bank TRAINING images
def test_eval_features_take_queries_from_the_test_split() -> None:
    from engine.config import validate_config
    from engine.data import DataSplits, ImageSet
    from engine.evaluation import eval_features
    from test_cli import _tiny

    cfg = validate_config({**_tiny(), "eval": {"max_bank": 30, "max_queries": 20}})
    tr = torch.zeros(40, 3, 8, 8, dtype=torch.uint8)
    te = torch.full((25, 3, 8, 8), 255, dtype=torch.uint8)
    tr[:, 0] = torch.arange(40, dtype=torch.uint8).view(40, 1, 1)  # the image's index in channel 0
    te[:, 0] = torch.arange(100, 125, dtype=torch.uint8).view(25, 1, 1)
    data = DataSplits(train=ImageSet(tr, torch.zeros(40, dtype=torch.long), ["a"]),
                      test=ImageSet(te, torch.zeros(25, dtype=torch.long), ["a"]), name="toy", source="toy")
    m = MeanColour(cfg, 8, False)
    fb, fq, bank_idx, q_idx = eval_features(m, data, cfg, torch.device("cpu"))
    assert fb.shape == (30, 3) and fq.shape == (20, 3)
    mean, std = torch.tensor(cfg.aug.mean), torch.tensor(cfg.aug.std)
    torch.testing.assert_close(fb, ((tr[bank_idx].float() / 255).mean((2, 3)) - mean) / std, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fq, ((te[q_idx].float() / 255).mean((2, 3)) - mean) / std, rtol=1e-4, atol=1e-4)
