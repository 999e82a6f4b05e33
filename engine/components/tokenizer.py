"""A small discrete visual tokenizer: a VQ-VAE with one code per ViT patch (BEiT's stage one).

BEiT (Bao et al. 2022) predicts the visual tokens of OpenAI's DALL-E dVAE; those weights
cannot be downloaded here, so :class:`VQTokenizer` is trained on the run's own data first.
It is a VQ-VAE (van den Oord, Vinyals, Kavukcuoglu, "Neural Discrete Representation
Learning", NeurIPS 2017):

    encoder E:   image [B, 3, H, W] -> z_e [B, D, H/p, W/p]   (convolutions, downsampling by the
                                                              ViT patch size p: one code per patch)
    quantiser:   z_q = e_k,  k = argmin_j ||z_e - e_j||       (codebook e: [K, D], K = vocabulary)
    decoder G:   z_q -> reconstruction [B, 3, H, W]           (mirror of E)
    loss:        ||x - G(z_q)||^2 + beta ||z_e - sg(e_k)||^2  (+ ||sg(z_e) - e_k||^2 without EMA)

Gradients pass the quantiser straight through (``z_e + sg(z_q - z_e)``). Two ways to learn
the codebook:

* ``ema=True`` (default; appendix A.1 of the paper, as in VQ-VAE-2): exponential moving
  averages of each code's assignment count and assigned-vector sum, ``e_j = sum_j / n_j``
  with Laplace smoothing; only the commitment term is in the loss.
* ``ema=False``: the codebook is a parameter learnt by the codebook loss
  ``||sg(z_e) - e_k||^2`` (the paper's main text).

Codebook use (many codes, not a few) is helped by three standard measures:

* vectors are L2-normalised before the look-up (``l2_codes``; cosine look-up as in
  ViT-VQGAN, Yu et al. 2022, and BEiT v2's tokenizer), so no code drifts far away;
* the codebook is initialised from encoder outputs of the first training batch;
* dead-code restart (Dhariwal et al. 2020, Jukebox): a code whose EMA count falls below
  ``restart_threshold`` x the average count ``N / K`` is moved onto a random encoder
  output of the current batch.

Monitors from each training call: ``perplexity`` = exp(entropy of the batch's code
histogram) (K when all codes are used equally) and ``codes_used`` (distinct codes in the
batch).

:func:`save_tokenizer` writes a stand-alone file atomically; :func:`load_tokenizer` reads
one (``torch.load(weights_only=True)``), a run's checkpoint (``checkpoints/last.pt``, the
``tokenizer.*`` weights of a BEiT run) or a run folder.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

TOKENIZER_FORMAT = "ssl-studio/vq-tokenizer"
TOKENIZER_VERSION = 1


def _factors(p: int) -> list[int]:
    """Downsampling steps whose product is p: as many 2s as divide p, then the rest in one step."""
    out = []
    while p % 2 == 0 and p > 1:
        out.append(2)
        p //= 2
    if p > 1:
        out.append(p)
    return out


class ResBlock(nn.Module):
    """x + conv1x1(act(conv3x3(act(x)))) (the VQ-VAE paper's residual block)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class VQTokenizer(nn.Module):
    """VQ-VAE tokenizer: image [B, 3, H, W] -> codes [B, H/p, W/p] in [0, vocab_size).

    Args:
        patch_size: downsampling factor p (the ViT's patch size): one code per patch.
        vocab_size: codebook size K.
        code_dim: dimension D of the codes.
        width: channels at the code resolution; higher resolutions use half as many per
            doubling (at least 32), which keeps the full-resolution convolutions cheap.
        res_blocks: residual blocks at the code resolution in the encoder and in the decoder.
        ema: learn the codebook by exponential moving averages (True) or by the codebook loss.
        decay: EMA decay of the codebook statistics.
        beta: commitment-loss weight (0.25 in the paper).
        l2_codes: L2-normalise encoder outputs and codes (cosine look-up).
        restart_threshold: restart codes whose EMA count is below this fraction of the
            average count per code (0 disables restarts).
    """

    def __init__(self, patch_size: int, vocab_size: int = 8192, code_dim: int = 32, width: int = 128,
                 res_blocks: int = 1, ema: bool = True, decay: float = 0.99, beta: float = 0.25,
                 l2_codes: bool = True, restart_threshold: float = 0.1) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            patch_size=int(patch_size), vocab_size=int(vocab_size), code_dim=int(code_dim), width=int(width),
            res_blocks=int(res_blocks), ema=bool(ema), decay=float(decay), beta=float(beta),
            l2_codes=bool(l2_codes), restart_threshold=float(restart_threshold))
        self.patch_size = int(patch_size)
        self.vocab_size = int(vocab_size)
        self.code_dim = int(code_dim)
        self.ema = bool(ema)
        self.decay = float(decay)
        self.beta = float(beta)
        self.l2_codes = bool(l2_codes)
        self.restart_threshold = float(restart_threshold)

        steps = _factors(self.patch_size)
        k = len(steps)
        chans = [max(32, width >> (k - i)) if i < k else width for i in range(k + 1)]  # per resolution level
        # encoder: [B, 3, H, W] -> [B, code_dim, H/p, W/p]
        enc: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1)]
        for i, f in enumerate(steps):
            enc += [nn.GELU(), _down(chans[i], chans[i + 1], f)]
        enc += [ResBlock(width) for _ in range(res_blocks)]
        enc += [nn.GELU(), nn.Conv2d(width, code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        # decoder: [B, code_dim, H/p, W/p] -> [B, 3, H, W]
        dec: list[nn.Module] = [nn.Conv2d(code_dim, width, 3, padding=1)]
        dec += [ResBlock(width) for _ in range(res_blocks)]
        for i, f in reversed(list(enumerate(steps))):
            dec += [nn.GELU(), _up(chans[i + 1], chans[i], f)]
        dec += [nn.GELU(), nn.Conv2d(chans[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

        # codebook e: [K, D]; a buffer with EMA statistics, or a parameter
        init = F.normalize(torch.randn(vocab_size, code_dim), dim=1)
        if self.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("ema_count", torch.ones(vocab_size))  # EMA of assignments per code
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self._init_checked = False

    # ------------------------------------------------------------------ pieces
    def _prep(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1) if self.l2_codes else z

    def codes(self) -> torch.Tensor:
        """The codebook as used in the look-up: [K, D]."""
        return self._prep(self.codebook)

    def encode_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] (normalised image) -> z_e [B, h, w, D] (before quantisation)."""
        z = self.encoder(x)  # [B, D, h, w]
        return self._prep(z.permute(0, 2, 3, 1).float())

    @torch.no_grad()
    def nearest(self, z: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Index of the nearest code for each vector: z [..., D] -> long [...]."""
        e = self.codes().float()  # [K, D]
        flat = z.reshape(-1, z.shape[-1]).float()
        e2 = (e * e).sum(1)  # [K]
        idx = [torch.argmin(e2 - 2.0 * (c @ e.t()), dim=1) for c in flat.split(chunk)]  # ||z||^2 is constant
        return torch.cat(idx).reshape(z.shape[:-1])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Visual tokens: x [B, 3, H, W] (normalised image) -> long [B, H/p, W/p]. No state changes."""
        with torch.autocast(x.device.type, enabled=False):
            return self.nearest(self.encode_vectors(x.float()))

    def decode_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Tokens long [B, h, w] -> image [B, 3, h*p, w*p] (normalised, like the input)."""
        zq = self.codes()[idx]  # [B, h, w, D]
        return self.decoder(zq.permute(0, 3, 1, 2).contiguous())

    # ---------------------------------------------------------------- training
    def forward(self, x: torch.Tensor, update: bool = False) -> dict[str, torch.Tensor]:
        """One VQ-VAE pass: x [B, 3, H, W] (normalised) ->
        {'recon' [B, 3, H, W], 'loss', 'recon_loss', 'commit_loss', 'codes' long [B, h, w],
         'perplexity', 'codes_used'}.

        With ``update`` (stage-one training) the EMA codebook statistics are updated and dead
        codes restarted; otherwise the codebook is left as it is.
        """
        with torch.autocast(x.device.type, enabled=False):
            z = self.encode_vectors(x.float())  # z: [B, h, w, D] float32
            flat = z.reshape(-1, self.code_dim)  # [N, D]
            if update and not self._init_checked:  # one host sync, on the first training call
                if not bool(self.initialised):
                    self._init_from(flat.detach())
                self._init_checked = True
            idx = self.nearest(z)  # [B, h, w]
            e = self.codes()  # [K, D]
            zq = e[idx]  # [B, h, w, D]
            commit = F.mse_loss(z, zq.detach())
            loss_vq = self.beta * commit
            if not self.ema:
                loss_vq = loss_vq + F.mse_loss(zq, z.detach())  # codebook loss
            counts = torch.bincount(idx.reshape(-1), minlength=self.vocab_size).float()  # [K]
            if update:
                self._update(flat.detach(), idx.reshape(-1), counts)
            zq_st = z + (zq - z).detach()  # straight-through estimator
        recon = self.decoder(zq_st.permute(0, 3, 1, 2).contiguous())  # [B, 3, H, W]
        recon_loss = F.mse_loss(recon.float(), x.float())
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        return {
            "recon": recon, "loss": recon_loss + loss_vq, "recon_loss": recon_loss, "commit_loss": commit,
            "codes": idx, "perplexity": perplexity, "codes_used": (counts > 0).sum().float(),
        }

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        """Codebook <- random encoder outputs of the first batch (with replacement if too few)."""
        N, K = flat.shape[0], self.vocab_size
        pick = torch.randperm(N, device=flat.device)[:K] if N >= K else torch.randint(0, N, (K,), device=flat.device)
        new = flat[pick] + 0.01 * torch.randn(K, self.code_dim, device=flat.device)
        self.codebook.data.copy_(self._prep(new))
        # counts start at the restart threshold: a code that the data does not pick is restarted at once
        start = max(self.restart_threshold, 1e-3) * N / K
        self.ema_count.fill_(start)
        if self.ema:
            self.ema_sum.copy_(self.codebook * start)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA codebook update (ema=True) and dead-code restarts. flat: [N, D], idx: [N], counts: [K]."""
        d = self.decay
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)  # [K, D]
            self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + self.vocab_size * 1e-5) * n  # Laplace smoothing
            self.codebook.copy_(self._prep(self.ema_sum / smoothed[:, None]))
        if self.restart_threshold > 0:
            N, K = flat.shape[0], self.vocab_size
            dead = self.ema_count < self.restart_threshold * (N / K)  # [K]
            # a random batch vector for every code; only dead codes take theirs
            pick = flat[torch.randint(0, N, (K,), device=flat.device)]
            new = self._prep(pick + 0.01 * torch.randn_like(pick))
            dm = dead[:, None]
            self.codebook.data.copy_(torch.where(dm, new, self.codebook.data))
            if self.ema:
                self.ema_sum.copy_(torch.where(dm, new * (N / K), self.ema_sum))
            self.ema_count.copy_(torch.where(dead, torch.full_like(self.ema_count, N / K), self.ema_count))


def _down(cin: int, cout: int, f: int) -> nn.Module:
    """Downsample by f: 4x4 stride-2 convolution for 2, an f x f stride-f one otherwise."""
    if f == 2:
        return nn.Conv2d(cin, cout, 4, stride=2, padding=1)
    return nn.Conv2d(cin, cout, f, stride=f)


def _up(cin: int, cout: int, f: int) -> nn.Module:
    if f == 2:
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    return nn.ConvTranspose2d(cin, cout, f, stride=f)


# ------------------------------------------------------------------ files
def save_tokenizer(tok: VQTokenizer, path: str | Path) -> Path:
    """Write ``{'format', 'version', 'config', 'state_dict'}`` atomically (temporary file + rename)."""
    from ..fileio import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({
        "format": TOKENIZER_FORMAT, "version": TOKENIZER_VERSION, "config": dict(tok.config),
        "state_dict": {k: v.detach().cpu() for k, v in tok.state_dict().items()},
    }, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _read(path: Path) -> Any:
    try:
        return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a torn or foreign file
        raise CheckpointError(
            f"tokenizer file {path} is truncated, corrupt or not a weights file ({type(e).__name__}); "
            "point params.tokenizer_path at a saved tokenizer, a BEiT run folder or its checkpoints/last.pt"
        ) from None


def load_tokenizer(path: str | Path) -> VQTokenizer:
    """A tokenizer from a stand-alone file (:func:`save_tokenizer`), a BEiT run's checkpoint
    or a BEiT run folder. Raises CheckpointError with what is wrong."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise CheckpointError(f"tokenizer not found: {path} (params.tokenizer_path)")
    data = _read(p)
    if isinstance(data, dict) and data.get("format") == TOKENIZER_FORMAT:
        cfg, sd = data.get("config"), data.get("state_dict")
    elif isinstance(data, dict) and isinstance(data.get("model"), dict):  # a trainer checkpoint
        run_cfg = data.get("config") or {}
        if run_cfg.get("method") != "beit":
            raise CheckpointError(f"{p} is a checkpoint of a '{run_cfg.get('method')}' run, which has no tokenizer")
        sd = {k[len("tokenizer."):]: v for k, v in data["model"].items() if k.startswith("tokenizer.")}
        if not bool(data["model"].get("tokenizer_ready", torch.tensor(False))):
            raise CheckpointError(f"{p}: that run had not finished training its tokenizer yet")
        cfg = tokenizer_config(run_cfg.get("params") or {}, int((run_cfg.get("model") or {}).get("patch_size", 16)))
    else:
        raise CheckpointError(f"{p} is not a tokenizer file or a BEiT run checkpoint")
    if not isinstance(cfg, dict) or not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{p}: the tokenizer file has no configuration or weights")
    try:
        tok = VQTokenizer(**cfg)
        tok.load_state_dict(sd)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p}: the tokenizer weights do not fit ({str(e).splitlines()[0]})") from None
    return tok


def tokenizer_config(params: dict[str, Any], patch_size: int) -> dict[str, Any]:
    """VQTokenizer keyword arguments from BEiT's params (``tok_*``, ``vocab_size``)."""
    return dict(
        patch_size=patch_size, vocab_size=params.get("vocab_size", 8192), code_dim=params.get("tok_code_dim", 32),
        width=params.get("tok_width", 128), res_blocks=params.get("tok_res_blocks", 1),
        ema=params.get("tok_ema", True), decay=params.get("tok_decay", 0.99), beta=params.get("tok_beta", 0.25),
        l2_codes=True, restart_threshold=params.get("tok_restart", 0.1),
    )


__all__ = ["VQTokenizer", "load_tokenizer", "save_tokenizer", "tokenizer_config"]
