"""Visual probes every method gets: the last block's attention maps for a ViT backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import validate_config
from engine.methods import create_method
from helpers import with_
from test_cli import _tiny

CONTRASTIVE = ["simclr", "moco_v1", "moco_v2", "moco_v3", "byol", "simsiam", "barlow_twins", "swav", "dino"]


@pytest.mark.parametrize("method", CONTRASTIVE)
def test_a_vit_backbone_shows_its_attention_and_a_resnet_shows_none(method: str) -> None:
    torch.manual_seed(0)
    small = {"swav": {"n_prototypes": 10}, "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
             "barlow_twins": {"proj_hidden": 32, "proj_out": 32}}.get(method, {})
    extra = {"aug.local_crops.count": 2, "aug.local_crops.size": 16} if method in ("swav", "dino") else {}
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    vit = create_method(validate_config(with_(_tiny(), method=method, params=small,
                                              model={"arch": "vit_tiny", "patch_size": 8}, **extra)), 32).eval()
    att = vit.probes(images)["attention"]["images"]["attention"]  # [N, heads, H, W]
    assert att.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(att.sum(axis=(2, 3)), 1.0, rtol=1e-4)
    resnet = create_method(validate_config(with_(_tiny(), method=method, params=small, **extra)), 32).eval()
    assert resnet.probes(images) == {}
