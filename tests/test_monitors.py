"""kNN accuracy, collapse indicators, feature extraction and PCA (CPU, tiny sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.monitors import collapse_indicators, extract_features, knn_top1, pca_2d


def _clusters(n_per: int, n_classes: int, d: int, seed: int, noise: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g) * 3
    labels = torch.arange(n_classes).repeat_interleave(n_per)
    feats = centres[labels] + noise * torch.randn(len(labels), d, generator=g)
    return feats, labels


# ====================================================================== kNN
def test_knn_clustered_features_near_perfect() -> None:
    tr, ytr = _clusters(50, 5, 16, seed=0)
    te, yte = _clusters(20, 5, 16, seed=0)  # same centres (same seed), fresh noise below
    te = te + 0.05 * torch.randn(te.shape, generator=torch.Generator().manual_seed(9))
    acc = knn_top1(tr, ytr, te, yte, k=20, t=0.1)
    assert acc == pytest.approx(1.0)
    # chunking does not change the result
    assert knn_top1(tr, ytr, te, yte, k=20, t=0.1, chunk_size=7) == acc


def test_knn_random_labels_near_chance() -> None:
    g = torch.Generator().manual_seed(3)
    n_classes = 10
    tr, te = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
    ytr = torch.randint(0, n_classes, (2000,), generator=g)
    yte = torch.randint(0, n_classes, (1000,), generator=g)
    acc = knn_top1(tr, ytr, te, yte, k=50, t=0.1, n_classes=n_classes)
    assert abs(acc - 1 / n_classes) < 0.05


def test_knn_k_capped_by_bank_size() -> None:
    tr = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    ytr = torch.tensor([0, 0, 1])
    te = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    yte = torch.tensor([0, 1])
    # k=200 > bank of 3: every bank entry votes; the weights still pick the right class
    assert knn_top1(tr, ytr, te, yte, k=200, t=0.1) == 1.0


def test_knn_weighted_vote_hand_computed() -> None:
    # query q = (1, 0); bank at angles giving cosine similarities 1.0 (class 0),
    # 0.8 and 0.8 (class 1). With k=3:
    #   t = 1:   class 0 weight e^1 = 2.72; class 1 weight 2 e^0.8 = 4.45 -> class 1
    #   t = 0.1: class 0 weight e^10 = 22026; class 1 weight 2 e^8 = 5962 -> class 0
    c, s = 0.8, 0.6
    tr = torch.tensor([[1.0, 0.0], [c, s], [c, -s]])
    ytr = torch.tensor([0, 1, 1])
    q = torch.tensor([[2.0, 0.0]])  # not normalised: knn_top1 normalises
    assert 2 * math.exp(0.8) > math.exp(1.0) and math.exp(10) > 2 * math.exp(8)
    assert knn_top1(tr, ytr, q, torch.tensor([1]), k=3, t=1.0) == 1.0
    assert knn_top1(tr, ytr, q, torch.tensor([0]), k=3, t=0.1) == 1.0
    # k=1: only the nearest neighbour votes
    assert knn_top1(tr, ytr, q, torch.tensor([0]), k=1, t=1.0) == 1.0
    # a tiny temperature does not overflow
    assert knn_top1(tr, ytr, q, torch.tensor([0]), k=3, t=1e-3) == 1.0


def test_knn_with_a_non_finite_feature_is_nan_not_a_score() -> None:
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(50, 8, generator=g), torch.randn(10, 8, generator=g)
    labels, q_labels = torch.arange(50) % 5, torch.arange(10) % 5
    assert math.isfinite(knn_top1(bank, labels, q, q_labels, k=5))
    bank[3, 2] = float("nan")  # an overflowed image: it would be every query's nearest neighbour
    assert math.isnan(knn_top1(bank, labels, q, q_labels, k=5))


def test_rank_me_bound_is_reported_for_tiny_batches() -> None:
    ind = collapse_indicators(torch.randn(2, 64), torch.randn(2, 64))
    assert ind["dim"] == 2.0 and ind["rank_me"] <= 2.0 + 1e-4  # two outputs cannot have rank above 2
    assert collapse_indicators(torch.randn(256, 32))["dim"] == 32.0


def test_knn_rejects_negative_labels() -> None:
    with pytest.raises(ValueError):
        knn_top1(torch.randn(4, 2), torch.tensor([0, 1, -1, 0]), torch.randn(2, 2), torch.tensor([0, 1]))


# ================================================================= collapse
def test_collapse_std_and_rank_isotropic() -> None:
    d = 16
    z = torch.randn(4000, d, generator=torch.Generator().manual_seed(0))
    ind = collapse_indicators(z)
    assert all(isinstance(v, float) for v in ind.values())
    assert ind["std_ref"] == pytest.approx(1 / math.sqrt(d))
    assert ind["std"] == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert d - 1.0 < ind["rank_me"] <= d + 1e-3
    assert "alignment" not in ind  # needs z2


def test_collapse_constant_and_rank_one() -> None:
    const = torch.ones(64, 8) * 3.0
    ind = collapse_indicators(const, const.clone())
    assert ind["std"] == pytest.approx(0.0, abs=1e-6)
    assert ind["rank_me"] == pytest.approx(1.0, abs=1e-3)
    assert ind["alignment"] == pytest.approx(0.0, abs=1e-6)
    assert ind["uniformity"] == pytest.approx(0.0, abs=1e-6)

    g = torch.Generator().manual_seed(1)
    rank1 = torch.randn(64, 1, generator=g) @ torch.randn(1, 8, generator=g)
    assert collapse_indicators(rank1)["rank_me"] == pytest.approx(1.0, abs=1e-3)


def test_alignment_and_uniformity() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(256, 32, generator=g)
    ind = collapse_indicators(z, z * 2.0)  # same directions: perfectly aligned
    assert ind["alignment"] == pytest.approx(0.0, abs=1e-6)
    assert ind["uniformity"] < -1.0  # spread on the sphere (minimum is -4)
    # explicit Wang & Isola formulas
    zn = torch.nn.functional.normalize(z, dim=1)
    z2 = torch.randn(256, 32, generator=g)
    z2n = torch.nn.functional.normalize(z2, dim=1)
    ind = collapse_indicators(z, z2)
    assert ind["alignment"] == pytest.approx(float(((zn - z2n) ** 2).sum(1).mean()), rel=1e-5)
    iu = torch.triu_indices(256, 256, offset=1)
    sq = torch.cdist(zn, zn).pow(2)[iu[0], iu[1]]
    assert ind["uniformity"] == pytest.approx(float(sq.mul(-2).exp().mean().log()), rel=1e-4)


def test_collapse_under_bf16_inputs() -> None:
    z = torch.randn(128, 16).bfloat16()
    ind = collapse_indicators(z, z)
    assert all(math.isfinite(v) for v in ind.values())


# =============================================================== extraction
def test_extract_features_normalises_resizes_and_batches() -> None:
    imgs = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    seen: list[tuple[int, ...]] = []

    def embed(x: torch.Tensor) -> torch.Tensor:  # x: [b, 3, h, w] -> per-channel means [b, 3]
        assert not torch.is_grad_enabled()
        seen.append(tuple(x.shape))
        return x.mean(dim=(2, 3)).double()

    out = extract_features(embed, imgs, batch_size=2, device="cpu", mean=mean, std=std)
    assert out.shape == (5, 3) and out.dtype == torch.float32
    assert seen == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    ref = ((imgs.float() / 255 - m) / s).mean(dim=(2, 3))
    torch.testing.assert_close(out, ref)

    seen.clear()
    out = extract_features(embed, imgs, batch_size=4, device="cpu", mean=mean, std=std, size=4)
    assert seen == [(4, 3, 4, 4), (1, 3, 4, 4)] and out.shape == (5, 3)


# ====================================================================== PCA
def test_pca_2d() -> None:
    g = torch.Generator().manual_seed(4)
    # variance mostly along two directions
    feats = torch.randn(100, 2, generator=g) * torch.tensor([5.0, 2.0]) @ torch.randn(2, 10, generator=g)
    feats = feats + 0.01 * torch.randn(100, 10, generator=g)
    p = pca_2d(feats)
    assert isinstance(p, np.ndarray) and p.shape == (100, 2) and p.dtype == np.float32
    assert abs(p.mean(0)).max() < 1e-3  # centred
    assert p[:, 0].var() >= p[:, 1].var()
    # total variance of the two components ~ total variance of the data
    total = float(((feats - feats.mean(0)) ** 2).sum(1).mean())
    assert (p ** 2).sum(1).mean() == pytest.approx(total, rel=1e-3)
    # wide features (D > N) take the Gram path and give the same picture
    wide = torch.randn(6, 50, generator=g)
    cov_path = pca_2d(wide)
    x = (wide - wide.mean(0)).double()
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    ref = (u[:, :2] * s[:2]).numpy()
    np.testing.assert_allclose(np.abs(cov_path), np.abs(ref), rtol=1e-3, atol=1e-4)
    assert pca_2d(torch.randn(3, 1)).shape == (3, 2)
    assert pca_2d(torch.randn(0, 4)).shape == (0, 2)
