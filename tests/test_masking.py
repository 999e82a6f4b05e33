"""engine.masking: exact counts, MAE's shuffle / restore, SimMIM groups, BEiT blocks,
MultiMAE's Dirichlet split, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.masking import (  # noqa: I001
    _host_seed,
    block_masking,
    dirichlet_allocation,
    grid_masking,
    ids_from_mask,
    mask_to_pixels,
    multimodal_random_masking,
    patch_mask,
    random_masking,
    simmim_mask,
    simmim_mask_patch,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def components(grid: np.ndarray) -> int:
    """4-connected components of True cells (flood fill, no scipy)."""
    h, w = grid.shape
    seen = np.zeros_like(grid, dtype=bool)
    count = 0
    for y in range(h):
        for x in range(w):
            if grid[y, x] and not seen[y, x]:
                count += 1
                stack = [(y, x)]
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < h and 0 <= nx < w and grid[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
    return count


# ---------------------------------------------------------------------- MAE
@pytest.mark.parametrize("L,ratio", [(64, 0.75), (196, 0.75), (49, 0.6), (16, 0.5)])
def test_random_masking_counts_and_shapes(L, ratio):
    n = 7
    ids_keep, mask, ids_restore = random_masking(n, L, ratio, generator=gen())
    keep = int(L * (1 - ratio))
    assert ids_keep.shape == (n, keep) and ids_keep.dtype == torch.long
    assert mask.shape == (n, L) and mask.dtype == torch.bool
    assert ids_restore.shape == (n, L) and ids_restore.dtype == torch.long
    assert (mask.sum(1) == L - keep).all()
    # the kept indices are exactly the unmasked patches
    vis = torch.zeros(n, L, dtype=torch.bool).scatter_(1, ids_keep, True)
    assert torch.equal(vis, ~mask)
    # different images get different masks
    assert not all(torch.equal(mask[0], mask[i]) for i in range(1, n))


def test_random_masking_restore_inverts_shuffle():
    n, L, D = 5, 64, 3
    ids_keep, mask, ids_restore = random_masking(n, L, 0.75, generator=gen(1))
    x = torch.randn(n, L, D)
    kept = x.gather(1, ids_keep[..., None].expand(-1, -1, D))  # [n, keep, D]
    # MAE's decoder: append "mask tokens" (here: marked with nan), unshuffle with ids_restore
    filler = torch.full((n, L - kept.shape[1], D), float("nan"))
    y = torch.cat([kept, filler], 1).gather(1, ids_restore[..., None].expand(-1, -1, D))
    assert torch.equal(y[~mask], x[~mask])  # visible patches back in place
    assert torch.isnan(y[mask]).all()  # mask tokens exactly on the masked patches
    # ids_restore is the inverse permutation of the shuffle whose prefix is ids_keep
    ids_shuffle = torch.argsort(ids_restore, 1)
    assert torch.equal(ids_shuffle[:, : ids_keep.shape[1]], ids_keep)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), torch.arange(L).expand(n, L))


def test_random_masking_is_uniform_over_patches():
    _, mask, _ = random_masking(4000, 16, 0.75, generator=gen(2))
    freq = mask.float().mean(0)
    assert (freq - 0.75).abs().max() < 0.04


# ------------------------------------------------------------------- SimMIM
def test_simmim_mask_patch_scaling():
    assert simmim_mask_patch(192, model_patch=16) == 32  # the paper's setting
    assert simmim_mask_patch(224, model_patch=16) == 32  # kept for larger images
    assert simmim_mask_patch(192, model_patch=4) == 32
    m32 = simmim_mask_patch(32, model_patch=4)
    m64 = simmim_mask_patch(64, model_patch=4)
    assert m32 % 4 == 0 and m32 >= 4 and 32 % m32 == 0
    assert m64 % 4 == 0 and 64 % m64 == 0 and m64 >= m32
    assert (m32, m64) == (8, 16)  # 32 * 32 / 192 = 5.3 -> 8; 32 * 64 / 192 = 10.7 -> 16
    assert simmim_mask_patch(16, model_patch=16) == 16  # at least one model patch
    assert simmim_mask_patch(96) == 16  # without a model patch: plain scaling


@pytest.mark.parametrize("grid,mask_patch,model_patch", [((8, 8), 8, 4), ((12, 12), 32, 16), ((6, 9), 12, 4)])
def test_simmim_mask_groups(grid, mask_patch, model_patch):
    n, ratio = 9, 0.6
    s = mask_patch // model_patch
    gh, gw = grid
    m = simmim_mask(n, grid, mask_patch, model_patch, ratio, generator=gen(3))
    assert m.shape == (n, gh * gw) and m.dtype == torch.bool
    rh, rw = math.ceil(gh / s), math.ceil(gw / s)
    g = m.reshape(n, gh, gw)
    # constant inside every s x s group
    for gy in range(rh):
        for gx in range(rw):
            cell = g[:, gy * s:(gy + 1) * s, gx * s:(gx + 1) * s].reshape(n, -1)
            assert (cell == cell[:, :1]).all()
    # exact number of masked groups per image
    groups = g[:, ::s, ::s]  # one representative per group
    assert (groups.reshape(n, -1).sum(1) == math.ceil(rh * rw * ratio)).all()


def test_simmim_mask_rejects_non_multiple():
    with pytest.raises(ValueError):
        simmim_mask(1, (8, 8), 6, 4, 0.6)


# --------------------------------------------------------------------- BEiT
@pytest.mark.parametrize("grid,num", [((14, 14), 75), ((8, 8), 26), ((4, 4), 6), ((6, 10), 24)])
def test_block_masking_exact_count(grid, num):
    n = 64
    m = block_masking(n, grid, num, generator=gen(4))
    assert m.shape == (n, grid[0] * grid[1]) and m.dtype == torch.bool
    assert (m.sum(1) == num).all()


def test_block_masking_forms_blocks():
    n, grid, num = 64, (14, 14), 75
    m = block_masking(n, grid, num, generator=gen(5)).reshape(n, *grid).numpy()
    comps = np.array([components(g) for g in m])
    # BEiT's blocks (>= 16 patches) leave a handful of components, not ~num scattered patches
    assert comps.mean() < 0.15 * num, comps.mean()
    rnd = random_masking(n, 196, 1 - 121 / 196, generator=gen(5))[1].reshape(n, *grid).numpy()
    assert comps.mean() < 0.5 * np.mean([components(g) for g in rnd])
    # blocks rather than lines: most masked patches have a masked 4-neighbour
    nb = np.zeros_like(m)
    nb[:, 1:] |= m[:, :-1]
    nb[:, :-1] |= m[:, 1:]
    nb[:, :, 1:] |= m[:, :, :-1]
    nb[:, :, :-1] |= m[:, :, 1:]
    assert (m & nb).sum() / m.sum() > 0.9


def test_block_masking_small_grid_still_blocky():
    n, grid, num = 64, (8, 8), 26  # 32 px, patch 4: 40 % of 64
    m = block_masking(n, grid, num, generator=gen(6)).reshape(n, *grid).numpy()
    assert np.mean([components(g) for g in m]) < 0.3 * num


def _beit_reference(n: int, gh: int, gw: int, num: int, min_b: int, seed: int) -> np.ndarray:
    """BEiT's MaskingGenerator (microsoft/unilm beit/masking_generator.py) per image, in plain
    Python, with the same top-up to the exact count."""
    import random as pyrandom

    rng = pyrandom.Random(seed)
    out = np.zeros((n, gh, gw), dtype=bool)
    la, lb = math.log(0.3), math.log(1 / 0.3)
    for mask in out:
        count = 0
        while count < num:
            left_to_mask, delta = num - count, 0
            for _ in range(10):
                target = rng.uniform(min_b, left_to_mask)
                ar = math.exp(rng.uniform(la, lb))
                h, w = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
                if 0 < h < gh and 0 < w < gw:
                    top, left = rng.randint(0, gh - h), rng.randint(0, gw - w)
                    new = h * w - int(mask[top:top + h, left:left + w].sum())
                    if 0 < new <= left_to_mask:
                        mask[top:top + h, left:left + w] = True
                        delta = new
                        break
            if delta == 0:
                break
            count += delta
        free = np.flatnonzero(~mask.reshape(-1)).tolist()
        mask.reshape(-1)[rng.sample(free, num - count)] = True
    return out


def test_block_masking_matches_beits_per_image_algorithm_in_distribution():
    n, (gh, gw), num = 2000, (14, 14), 75
    ours = block_masking(n, (gh, gw), num, generator=gen(9)).reshape(n, gh, gw).numpy()
    ref = _beit_reference(n, gh, gw, num, 16, seed=9)
    assert (ref.reshape(n, -1).sum(1) == num).all()
    c_ours = np.array([components(g) for g in ours[:1500]])
    c_ref = np.array([components(g) for g in ref[:1500]])
    se = np.hypot(c_ours.std(), c_ref.std()) / np.sqrt(1500)
    assert abs(c_ours.mean() - c_ref.mean()) < 4 * se, (c_ours.mean(), c_ref.mean())
    # where the blocks land: the same per-patch frequency (borders are masked less often)
    f_ours, f_ref = ours.mean(0), ref.mean(0)
    assert np.abs(f_ours - f_ref).max() < 0.06
    assert f_ref[0, 0] < f_ref[7, 7] - 0.1 and f_ours[0, 0] < f_ours[7, 7] - 0.1


def test_block_masking_varies_and_covers_grid():
    m = block_masking(512, (8, 8), 26, generator=gen(7)).float()
    assert not torch.equal(m[0], m[1])
    freq = m.mean(0)
    assert freq.min() > 0.05  # every patch gets masked sometimes (borders included)


# ----------------------------------------------------------------- MultiMAE
def test_dirichlet_allocation_sums_and_varies():
    n, V, M = 200, 98, 3
    c = dirichlet_allocation(n, V, M, alpha=1.0, generator=gen(8))
    assert c.shape == (n, M) and c.dtype == torch.long
    assert (c.sum(1) == V).all()
    assert (c >= 0).all()
    assert len({tuple(r) for r in c.tolist()}) > n // 2  # rows differ
    # symmetric Dirichlet: every modality gets V / M on average
    assert ((c.float().mean(0) - V / M).abs() < 0.15 * V / M).all()


def test_dirichlet_alpha_controls_spread():
    wide = dirichlet_allocation(500, 60, 3, alpha=0.2, generator=gen(9)).float()
    even = dirichlet_allocation(500, 60, 3, alpha=50.0, generator=gen(9)).float()
    assert wide.std(1).mean() > 3 * even.std(1).mean()


def test_dirichlet_capacity_is_respected():
    c = dirichlet_allocation(300, 30, 3, alpha=0.3, generator=gen(10), capacity=[16, 16, 16])
    assert (c.sum(1) == 30).all()
    assert (c <= 16).all()
    with pytest.raises(ValueError):
        dirichlet_allocation(2, 50, 3, capacity=[16, 16, 16])


def test_multimodal_random_masking_counts():
    toks = [16, 16, 9]
    c = dirichlet_allocation(50, 20, 3, generator=gen(11), capacity=toks)
    out = multimodal_random_masking(c, toks, generator=gen(12))
    assert len(out) == 3
    for m, ((order, mask), L) in enumerate(zip(out, toks)):
        assert order.shape == (50, L) and mask.shape == (50, L)
        assert torch.equal((~mask).sum(1), c[:, m])
        # the first counts[i, m] entries of the order are exactly the visible tokens
        for i in range(50):
            k = int(c[i, m])
            vis = torch.zeros(L, dtype=torch.bool)
            vis[order[i, :k]] = True
            assert torch.equal(vis, ~mask[i])
    # the documented recipe for the concatenated visible tokens
    masks = torch.cat([mk for _, mk in out], 1)
    ids = torch.argsort(masks.to(torch.uint8), dim=1, stable=True)[:, :20]
    assert (~masks.gather(1, ids)).all()


# ------------------------------------------------------------------- display
def test_mask_to_pixels():
    mask = torch.tensor([[True, False, False, True, False, True]])
    px = mask_to_pixels(mask, (2, 3), 4)
    assert px.shape == (1, 1, 8, 12) and px.dtype == torch.bool
    assert px[0, 0, :4, :4].all() and not px[0, 0, :4, 4:].any()  # row 0: column 0 masked
    assert px[0, 0, 4:, 8:].all() and not px[0, 0, 4:, 4:8].any()  # row 1: columns 0 and 2 masked
    assert int(px.sum()) == 3 * 16


# ------------------------------------------------------ mask types (ablations)
def test_grid_masking_keeps_one_of_every_two_by_two() -> None:
    m = grid_masking(3, (4, 6))
    assert m.shape == (3, 24) and (m == m[0]).all()
    keep = ~m[0].reshape(4, 6)
    assert keep.sum() == 6 and keep[0::2, 0::2].all() and not keep[1::2].any() and not keep[:, 1::2].any()
    assert grid_masking(1, (8, 8)).float().mean() == 0.75
    assert (~grid_masking(1, (5, 5))).sum() == 9  # odd grids keep the even rows and columns


def test_patch_mask_kinds_have_exact_counts() -> None:
    for kind in ("random", "block"):
        m = patch_mask(kind, 64, (8, 8), 26, generator=gen(1))
        assert m.shape == (64, 64) and (m.sum(1) == 26).all(), kind
    # random: every patch equally likely; block: what block_masking draws
    freq = patch_mask("random", 4000, (4, 4), 6, generator=gen(2)).float().mean(0)
    assert (freq - 6 / 16).abs().max() < 0.04
    assert torch.equal(patch_mask("block", 5, (8, 8), 26, generator=gen(3)), block_masking(5, (8, 8), 26, generator=gen(3)))
    block = patch_mask("block", 200, (8, 8), 26, generator=gen(4)).reshape(200, 8, 8).numpy()
    rand = patch_mask("random", 200, (8, 8), 26, generator=gen(4)).reshape(200, 8, 8).numpy()
    assert np.mean([components(b) for b in block]) < 0.5 * np.mean([components(r) for r in rand])
    with pytest.raises(ValueError, match="unknown mask type"):
        patch_mask("square", 2, (4, 4), 3)
    with pytest.raises(ValueError, match="num_masked"):
        patch_mask("random", 2, (4, 4), 17)


@pytest.mark.parametrize("kind", ["random", "block", "grid"])
def test_ids_from_mask_match_maes_shuffle_and_restore(kind: str) -> None:
    mask = patch_mask(kind, 5, (6, 6), 27, generator=gen(5))  # [5, 36]
    ids_keep, ids_restore = ids_from_mask(mask)
    keep = int((~mask[0]).sum())
    assert ids_keep.shape == (5, keep)
    assert (~mask.gather(1, ids_keep)).all()  # the kept ids are the visible patches
    x = torch.arange(36.0).expand(5, 36)  # token values = patch index
    shuffled = torch.cat([x.gather(1, ids_keep), torch.full((5, 36 - keep), -1.0)], dim=1)  # kept + mask tokens
    restored = shuffled.gather(1, ids_restore)
    assert torch.equal(restored == -1.0, mask)  # mask tokens land on the masked positions
    assert torch.equal(restored[~mask], x[~mask])  # visible tokens back in place
    bad = torch.zeros(2, 4, dtype=torch.bool)
    bad[0, 0] = True
    with pytest.raises(ValueError, match="same number"):
        ids_from_mask(bad)


# --------------------------------------------------------------- determinism
@pytest.mark.parametrize("fn", [
    lambda g: random_masking(6, 64, 0.75, generator=g)[1],
    lambda g: simmim_mask(6, (8, 8), 8, 4, 0.6, generator=g),
    lambda g: block_masking(6, (8, 8), 26, generator=g),
    lambda g: patch_mask("random", 6, (8, 8), 26, generator=g),
    lambda g: dirichlet_allocation(6, 40, 3, generator=g),
    lambda g: multimodal_random_masking(torch.full((6, 2), 5), [16, 16], generator=g)[1][1],
])
def test_seeded_determinism(fn):
    a, b, c = fn(gen(123)), fn(gen(123)), fn(gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dirichlet_rounds_by_largest_remainder():
    """The per-modality counts are floor(Dirichlet share x budget) plus one for the largest
    remainders (Hamilton's method), so no modality is short-changed by rounding."""
    counts = dirichlet_allocation(256, 49, 3, generator=torch.Generator().manual_seed(3)).numpy()
    rng = np.random.default_rng(_host_seed(torch.Generator().manual_seed(3)))
    raw = rng.dirichlet(np.ones(3), size=256) * 49
    bumped = counts - np.floor(raw)
    assert set(np.unique(bumped)) <= {0, 1}
    frac = raw - np.floor(raw)
    for f, b in zip(frac, bumped):
        if 0 < b.sum() < 3:
            assert f[b == 1].min() >= f[b == 0].max()
