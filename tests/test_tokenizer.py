"""VQ-VAE tokenizer (BEiT's stage one): shapes, codebook use, EMA formula, files."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from engine.augment import to_float
from engine.components.tokenizer import TOKENIZER_FORMAT, VQTokenizer, load_tokenizer, save_tokenizer
from engine.data.shapes import make_shapes
from engine.errors import CheckpointError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def small(**kw) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(**{"patch_size": 4, "vocab_size": 32, "code_dim": 8, "width": 32, **kw})


@pytest.mark.parametrize("patch,size", [(4, 32), (8, 32), (16, 32), (6, 24)])
def test_one_code_per_patch(patch: int, size: int) -> None:
    tok = small(patch_size=patch)
    x = torch.randn(2, 3, size, size)
    codes = tok.encode(x)
    assert codes.shape == (2, size // patch, size // patch) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    assert tok.decode_codes(codes).shape == (2, 3, size, size)
    out = tok(x)
    assert out["recon"].shape == x.shape and out["codes"].shape == codes.shape
    assert torch.equal(out["codes"], codes)  # the same look-up


def test_codes_are_nearest_neighbours() -> None:
    tok = small(l2_codes=False)
    z = torch.randn(50, 8)
    e = tok.codes()
    d = ((z[:, None, :] - e[None]) ** 2).sum(-1)  # [50, K] squared distances
    assert torch.equal(tok.nearest(z), d.argmin(1))
    assert torch.equal(tok.nearest(z, chunk=7), d.argmin(1))  # chunked look-up gives the same


def test_encode_and_plain_forward_leave_the_codebook_alone() -> None:
    tok = small()
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    tok.encode(x)
    tok(x, update=False)
    for k, v in tok.state_dict().items():
        assert torch.equal(v, before[k]), k
    tok(x, update=True)  # a training call initialises the codebook from the batch
    assert bool(tok.initialised) and not torch.equal(tok.codebook, before["codebook"])


def test_ema_update_matches_the_formula() -> None:
    tok = small(l2_codes=False, restart_threshold=0.0, decay=0.9)
    K, D = 32, 8
    cb = torch.randn(K, D)
    tok.codebook.copy_(cb)
    tok.ema_sum.copy_(cb * 2.0)
    tok.ema_count.fill_(2.0)
    flat = torch.randn(40, D)
    idx = torch.randint(0, K, (40,))
    counts = torch.bincount(idx, minlength=K).float()
    tok._update(flat, idx, counts)
    n_new = 0.9 * 2.0 + 0.1 * counts  # EMA of the counts
    sums = torch.zeros(K, D)
    for i in range(40):
        sums[idx[i]] += flat[i]
    s_new = 0.9 * cb * 2.0 + 0.1 * sums  # EMA of the assigned-vector sums
    n = n_new.sum()
    smoothed = (n_new + 1e-5) / (n + K * 1e-5) * n  # Laplace smoothing (VQ-VAE-2 / Sonnet)
    torch.testing.assert_close(tok.ema_count, n_new)
    torch.testing.assert_close(tok.codebook, s_new / smoothed[:, None])


def test_dead_codes_are_restarted_on_batch_vectors() -> None:
    tok = small(l2_codes=False, restart_threshold=0.5)
    tok.ema_count.fill_(10.0)
    tok.ema_count[:5] = 0.0  # five dead codes
    old = tok.codebook.clone()
    flat = torch.randn(64, 8)
    tok._update(flat, torch.zeros(64, dtype=torch.long), torch.zeros(32))
    for j in range(5):  # each now sits (up to the 0.01 jitter) on one of the batch vectors
        assert torch.cdist(tok.codebook[j:j + 1], flat).min() < 0.1
    assert not torch.equal(tok.codebook[:5], old[:5])


def test_straight_through_variant_learns_the_codebook() -> None:
    tok = small(ema=False)
    assert isinstance(tok.codebook, torch.nn.Parameter)
    out = tok(torch.randn(4, 3, 32, 32), update=True)
    out["loss"].backward()
    assert tok.codebook.grad is not None and tok.codebook.grad.abs().sum() > 0  # codebook loss
    first = tok.encoder[0].weight.grad
    assert first is not None and first.abs().sum() > 0  # reconstruction reaches the encoder (straight-through)


def test_uses_many_codes_after_a_short_training() -> None:
    data = make_shapes(512, 32, seed=0)
    x = to_float(data.images, MEAN, STD)
    tok = small(vocab_size=128, width=64, code_dim=16)
    opt = torch.optim.AdamW(tok.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    recon = []
    for _ in range(60):
        out = tok(x[torch.randint(0, 512, (32,), generator=g)], update=True)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        recon.append(out["recon_loss"].item())
    used = tok.encode(x[:256]).unique().numel()
    print(f"tokenizer 60 steps: recon {sum(recon[:5]) / 5:.3f} -> {sum(recon[-5:]) / 5:.3f}, "
          f"{used} of 128 codes on 256 images, batch perplexity {out['perplexity'].item():.1f}")
    assert used > 0.2 * 128  # seen: ~80 of 128
    assert sum(recon[-5:]) < 0.9 * sum(recon[:5])


# ------------------------------------------------------------------- files
def test_save_and_load_round_trip(tmp_path) -> None:
    tok = small()
    tok(torch.randn(4, 3, 32, 32), update=True)  # move it away from its initial state
    path = save_tokenizer(tok, tmp_path / "tok.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["tok.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == TOKENIZER_FORMAT and raw["config"]["vocab_size"] == 32
    back = load_tokenizer(path)
    for k, v in tok.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back.encode(x), tok.encode(x))
    torch.testing.assert_close(back.decode_codes(tok.encode(x)), tok.decode_codes(tok.encode(x)))


def test_bad_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(tmp_path / "missing.pt")
    good = save_tokenizer(small(), tmp_path / "tok.pt")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_tokenizer(torn)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_tokenizer(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a tokenizer file"):
        load_tokenizer(other)
    # a tokenizer file whose weights do not match its own configuration
    bad = torch.load(good, weights_only=True)
    bad["config"]["vocab_size"] = 64
    mismatch = tmp_path / "mismatch.pt"
    torch.save(bad, mismatch)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_tokenizer(mismatch)


# loss = recon + beta * commitment (+ codebook loss, weight 1, without EMA)
@pytest.mark.parametrize("ema", [True, False])
def test_tokenizer_loss_weights_commitment_by_beta_and_codebook_by_one(ema: bool) -> None:

    tok = small(ema=ema, beta=0.25)
    x = torch.randn(4, 3, 32, 32)
    out = tok(x, update=False)
    with torch.no_grad():
        z = tok.encode_vectors(x)
        zq = tok.codes()[tok.nearest(z)]
        commit = F.mse_loss(z, zq)
    assert out["commit_loss"].item() == pytest.approx(commit.item(), rel=1e-5)
    expected = out["recon_loss"] + 0.25 * commit + (0.0 if ema else commit)  # ||sg(z) - e||^2 equals it in value
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    if not ema:  # the codebook's gradient comes from the codebook loss alone, with weight 1
        tok.zero_grad()
        out["loss"].backward()
        e = tok.codebook.detach().clone().requires_grad_(True)
        zq_ref = F.normalize(e, dim=-1)[tok.nearest(z)]
        F.mse_loss(zq_ref, z.detach()).backward()
        torch.testing.assert_close(tok.codebook.grad, e.grad, rtol=1e-4, atol=1e-7)


# codes_used = distinct codes of the batch, perplexity = exp(entropy of the histogram)
def test_tokenizer_codes_used_and_perplexity_monitors() -> None:

    tok = small()
    x = torch.randn(4, 3, 32, 32)  # 4 x 64 = 256 codes of 32
    out = tok(x, update=False)
    codes = out["codes"].reshape(-1)
    counts = torch.bincount(codes, minlength=32).float()
    assert out["codes_used"].item() == codes.unique().numel()
    p = counts[counts > 0] / counts.sum()
    assert out["perplexity"].item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-5)
    # a code used exactly once counts as used: codes 0 (63 times) and 3 (once)
    fixed = torch.zeros(1, 8, 8, dtype=torch.long)
    fixed[0, 2, 5] = 3
    tok.nearest = lambda z, chunk=16384: fixed
    out2 = tok(x[:1], update=False)
    assert out2["codes_used"].item() == 2
    q = torch.tensor([63 / 64, 1 / 64])
    assert out2["perplexity"].item() == pytest.approx(torch.exp(-(q * q.log()).sum()).item(), rel=1e-5)
