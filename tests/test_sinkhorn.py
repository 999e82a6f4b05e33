"""Sinkhorn-Knopp codes (SwAV, issue 4).

Convention (engine/components/sinkhorn.py): Q is [B, K] (samples x prototypes). Before the
final rescale, every column (prototype) is normalised to sum 1/K and then every row
(sample) to sum 1/B; the returned Q = B * that, so each row sums to exactly 1 and each
column to about B/K (exactly only after many iterations).
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.components.sinkhorn import sinkhorn


def _scores(B: int = 16, K: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(B, 8, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(K, 8, generator=g), dim=1)
    return z @ c.T  # cosines, as in SwAV


def _official_style(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """The paper's K x B form written out: Q = exp(S^T / eps) / total, then per iteration
    rows (prototypes) to 1/K, columns (samples) to 1/B; finally columns * B; transposed back."""
    Q = torch.exp(scores.double().T / eps)  # [K, B]
    K, B = Q.shape
    Q /= Q.sum()
    for _ in range(iters):
        Q /= Q.sum(dim=1, keepdim=True)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= B
    return (Q * B).T.float()


@pytest.mark.parametrize("iters", [1, 3, 10])
def test_matches_the_written_out_algorithm(iters: int) -> None:
    s = _scores()
    torch.testing.assert_close(sinkhorn(s, 0.05, iters), _official_style(s, 0.05, iters), rtol=1e-4, atol=1e-6)


def test_rows_sum_to_one_and_columns_to_b_over_k() -> None:
    B, K = 32, 8
    s = _scores(B, K, seed=1)
    q = sinkhorn(s, epsilon=0.05, n_iters=3)
    assert q.shape == (B, K) and q.dtype == torch.float32 and (q >= 0).all()
    # the last normalisation is over rows: exact after any number of iterations
    torch.testing.assert_close(q.sum(dim=1), torch.ones(B), rtol=1e-5, atol=1e-5)
    # before the rescale the rows sum to 1/B
    torch.testing.assert_close((q / B).sum(dim=1), torch.full((B,), 1 / B), rtol=1e-5, atol=1e-7)
    # columns: about B/K after 3 iterations, B/K after many (equipartition)
    assert (q.sum(dim=0) - B / K).abs().max() < 0.5 * B / K
    q_many = sinkhorn(s, epsilon=0.05, n_iters=300)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((K,), B / K), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(q_many.sum(dim=1), torch.ones(B), rtol=1e-5, atol=1e-5)


def test_equipartition_even_when_all_samples_prefer_one_prototype() -> None:
    B, K = 24, 6
    s = torch.zeros(B, K)
    s[:, 0] = 1.0  # every sample scores prototype 0 highest
    s += 0.01 * torch.randn(B, K, generator=torch.Generator().manual_seed(0))
    q = sinkhorn(s, epsilon=0.05, n_iters=100)
    torch.testing.assert_close(q.sum(dim=0), torch.full((K,), B / K), rtol=1e-3, atol=1e-3)
    plain = torch.softmax(s / 0.05, dim=1)  # without the constraint prototype 0 takes everything
    assert plain[:, 0].sum() > 0.99 * B


def test_shift_invariant_no_overflow_no_gradient() -> None:
    s = _scores().requires_grad_(True)
    q = sinkhorn(s, 0.05, 3)
    assert not q.requires_grad  # codes are targets (stop-gradient)
    torch.testing.assert_close(sinkhorn(s.detach() + 7.0, 0.05, 3), q, rtol=1e-5, atol=1e-6)
    big = 50.0 * _scores()  # exp(50 / 0.05) would overflow without the shift
    assert torch.isfinite(sinkhorn(big, 0.05, 3)).all()


def test_smaller_epsilon_gives_sharper_codes() -> None:
    s = _scores(64, 10, seed=2)

    def mean_entropy(q: torch.Tensor) -> float:
        return float(-(q * q.clamp_min(1e-30).log()).sum(dim=1).mean())

    sharp, soft = mean_entropy(sinkhorn(s, 0.02, 3)), mean_entropy(sinkhorn(s, 0.5, 3))
    assert sharp < soft <= math.log(10) + 1e-5


def test_bf16_input_under_autocast() -> None:
    s = _scores().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn(s, 0.05, 3)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.sum(dim=1), torch.ones(s.shape[0]), rtol=1e-5, atol=1e-5)
