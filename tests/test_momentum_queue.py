"""FeatureQueue (FIFO memory of keys) and the momentum (EMA) helpers (issue 4)."""

import math

import pytest
import torch
from torch import nn

from engine.components.momentum import ema_update, make_teacher, momentum_at
from engine.components.queue import FeatureQueue


def _keys(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """Rows whose every entry is their global index: start, start + 1, ... (easy to track)."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def _ids(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t[:, 0]]


# ----------------------------------------------------------------------------- queue
def test_queue_is_fifo_and_drops_the_oldest():
    q = FeatureQueue(5, 3)
    assert q.size == 5 and int(q.count) == 0 and q.filled().shape == (0, 3)
    q.enqueue(_keys(0, 2))
    assert _ids(q.filled()) == [0, 1] and _ids(q.negatives()) == [0, 1] and int(q.count) == 2
    q.enqueue(_keys(2, 2))
    assert _ids(q.filled()) == [0, 1, 2, 3]
    q.enqueue(_keys(4, 3))  # overflows by 2: keys 0 and 1 (the oldest) leave
    assert int(q.count) == 5 and q.feats.shape == (5, 3)
    assert _ids(q.filled()) == [2, 3, 4, 5, 6]
    assert sorted(_ids(q.negatives())) == [2, 3, 4, 5, 6]
    q.enqueue(_keys(7, 4))  # wraps around again (batch size does not divide K)
    assert _ids(q.filled()) == [6, 7, 8, 9, 10] and int(q.count) == 5


def test_queue_batch_larger_than_queue_keeps_the_newest():
    q = FeatureQueue(4, 3)
    q.enqueue(_keys(0, 3))
    q.enqueue(_keys(3, 6))
    assert _ids(q.filled()) == [5, 6, 7, 8]
    q.enqueue(_keys(9, 1))
    assert _ids(q.filled()) == [6, 7, 8, 9]


def test_queue_resize_keeps_the_newest_keys_and_stays_fifo():
    q = FeatureQueue(6, 3)
    q.enqueue(_keys(0, 4))
    q.enqueue(_keys(4, 4))  # holds 2..7, wrapped
    q.resize(3)  # shrink: newest three
    assert q.size == 3 and _ids(q.filled()) == [5, 6, 7] and int(q.count) == 3
    q.enqueue(_keys(8, 1))
    assert _ids(q.filled()) == [6, 7, 8]
    q.resize(5)  # grow: every stored key kept, the rest fills over the next steps
    assert q.size == 5 and _ids(q.filled()) == [6, 7, 8] and int(q.count) == 3
    q.enqueue(_keys(9, 3))
    assert _ids(q.filled()) == [7, 8, 9, 10, 11]
    q.resize(8)
    q.resize(2)  # shrink a partly filled queue
    assert _ids(q.filled()) == [10, 11]
    with pytest.raises(ValueError):
        q.resize(0)


def test_queue_enqueue_casts_and_detaches():
    q = FeatureQueue(4, 2)
    k = torch.randn(2, 2, requires_grad=True)
    q.enqueue(k.to(torch.bfloat16))
    assert q.feats.dtype == torch.float32 and not q.feats.requires_grad


def test_queue_state_dict_of_another_size_loads_on_the_module_device_and_dtype():
    a = FeatureQueue(4, 2)
    a.enqueue(_keys(0, 3, 2))
    a.resize(7)
    b = FeatureQueue(4, 2).to(torch.float64)  # stands in for "another device": must not be replaced
    b.load_state_dict(a.state_dict())
    assert b.feats.shape == (7, 2) and b.feats.dtype == torch.float64
    assert _ids(b.filled()) == [0, 1, 2] and int(b.ptr) == int(a.ptr)


# -------------------------------------------------------------------------- momentum
def test_make_teacher_is_a_frozen_copy():
    s = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    t = make_teacher(s)
    assert all(not p.requires_grad for p in t.parameters())
    assert all(p.requires_grad for p in s.parameters())
    for a, b in zip(s.parameters(), t.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_ema_update_formula_and_buffers():
    torch.manual_seed(0)
    s = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    t = make_teacher(s)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(torch.randn_like(p))
    s(torch.randn(8, 3))  # changes the student's BN running statistics
    old = [p.clone() for p in t.parameters()]
    m = 0.9
    ema_update(t, s, m)
    for o, tp, sp in zip(old, t.parameters(), s.parameters()):
        torch.testing.assert_close(tp, m * o + (1 - m) * sp)  # theta_t <- m theta_t + (1 - m) theta_s
    for tb, sb in zip(t.buffers(), s.buffers()):
        assert torch.equal(tb, sb)
    ema_update(t, s, 1.0)  # m = 1 freezes the teacher
    for o, tp, sp in zip(old, t.parameters(), s.parameters()):
        torch.testing.assert_close(tp, m * o + (1 - m) * sp)
    ema_update(t, s, 0.0)  # m = 0 copies the student
    for tp, sp in zip(t.parameters(), s.parameters()):
        torch.testing.assert_close(tp, sp)


def test_momentum_schedules():
    assert momentum_at(0, 100, 0.996, "constant") == 0.996
    assert momentum_at(73, 100, 0.996, "constant") == 0.996
    assert momentum_at(0, 100, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99, "cosine") == pytest.approx(0.995)  # halfway: (1 + base) / 2
    assert momentum_at(100, 100, 0.99, "cosine") == pytest.approx(1.0)
    # 1 - (1 - m0) (cos(pi k / K) + 1) / 2 (BYOL 3.2; MoCo v3's adjust_moco_momentum)
    k, K, m0 = 30, 120, 0.996
    assert momentum_at(k, K, m0) == pytest.approx(1 - (1 - m0) * (math.cos(math.pi * k / K) + 1) / 2)
    vals = [momentum_at(i, 50, 0.9) for i in range(51)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))  # non-decreasing
    assert momentum_at(3, 1, 0.9) == 0.9  # degenerate one-step run: the base
    with pytest.raises(ValueError):
        momentum_at(1, 10, 0.9, "linear")
