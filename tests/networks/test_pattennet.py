"""PattenNet fine-detail variants: they build, the frozen encoder stays frozen, the trainable parts learn."""
from __future__ import annotations

import pytest
import torch

from neonet_toolkit.experiment_planning.plans import NeoNetPlans, build_neonet_plans
from neonet_toolkit.networks.classifiers import (
    FINE_ARCHS,
    build_classifier,
    canonical_arch,
    parse_arch,
)
from neonet_toolkit.networks.generative import build_vae
from neonet_toolkit.networks.pattennet import FinePattenNet, PattenNet


def _cpu_small(n_vae_down: int = 2) -> tuple[dict, dict]:
    nn_plans = {"configurations": {"3d_fullres": {"spacing": [3.0, 1.5, 1.5]}}, "transpose_forward": [0, 1, 2],
                "transpose_backward": [0, 1, 2]}
    plans = NeoNetPlans(build_neonet_plans(dataset_name="D", target="PNI", label_roles={}, nnunet_plans=nn_plans,
                                           nnunet_plans_name="nnUNetPlans", seg_configuration="3d_fullres",
                                           crop_size_xyz=(32, 32, 16), n_vae_down=n_vae_down))
    return plans.stage("vae", "cpu_small"), plans.stage("cls", "cpu_small")


@pytest.mark.parametrize("arch", ["pattennet", *FINE_ARCHS])
def test_variant_builds_and_frozen_encoder_stays_frozen(arch):
    torch.manual_seed(0)
    vae_cfg, cls_cfg = _cpu_small()
    net = build_classifier(arch, cls_cfg, 2, vae_cfg, 1.0, vae=build_vae(vae_cfg))
    assert canonical_arch(arch) == arch
    assert isinstance(net, PattenNet if arch == "pattennet" else FinePattenNet)
    enc = net.encoder if arch == "pattennet" else net.frozen_encoder
    frozen = {k: v.clone() for k, v in enc.state_dict().items()}
    assert not any(p.requires_grad for p in enc.parameters())
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net.train()
    assert not enc.training  # the encoder never leaves eval mode (GroupNorm statistics, dropout)
    x = torch.randn(3, 2, 16, 32, 32)
    frozen_prefixes = ("encoder.", "latent_path.encoder.")
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith(frozen_prefixes)}
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).reshape(-1), torch.tensor([0.0, 1.0, 1.0]))
    loss.backward()
    opt.step()
    for k, v in enc.state_dict().items():
        assert torch.equal(v, frozen[k]), f"{arch}: frozen encoder weight {k} changed"
    changed = [k for k, v in net.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed, f"{arch}: no trainable weight moved"
    assert net(x).shape == (3, 1)


def test_fine_branch_and_taps_receive_gradient():
    torch.manual_seed(0)
    vae_cfg, cls_cfg = _cpu_small()
    net = build_classifier("pattennet_ms_fb", cls_cfg, 2, vae_cfg, 1.0, vae=build_vae(vae_cfg))
    x = torch.randn(2, 2, 16, 32, 32)
    net(x).sum().backward()
    for name, mod in (("fine branch", net.fine), ("x2 tap", net.tap_adapters[0]), ("x4 tap", net.tap_adapters[1])):
        g = [p.grad for p in mod.parameters()]
        assert all(t is not None for t in g) and sum(float(t.abs().sum()) for t in g) > 0, name
    assert all(p.grad is None for p in net.frozen_encoder.parameters())
    # the taps are the frozen encoder's own maps at x2 and x4, before the latent projection
    z, taps = net.frozen_encoder.forward_taps(x[:, :1])
    assert [tuple(t.shape[2:]) for t in taps] == [(8, 16, 16), (4, 8, 8)]
    assert torch.allclose(z, net.frozen_encoder(x[:, :1]))


def test_x2_vae_preset_gives_a_finer_latent_grid():
    """(c) the x2-downsampling VAE (planned with n_vae_down=1): PattenNet's latent grid is 2x finer."""
    vae_cfg, cls_cfg = _cpu_small(n_vae_down=1)
    net = build_classifier("pattennet", cls_cfg, 2, vae_cfg, 1.0, vae=build_vae(vae_cfg))
    assert net.encoder.downsampling == 2
    assert tuple(net.encode(torch.randn(1, 2, 16, 32, 32)).shape[2:]) == (8, 16, 16)


def test_fine_names():
    info = parse_arch("pattennet_fine", {"n_dab": 2, "dab_mode": "channel_spatial"})
    assert info["fine_branch"] or info["taps"]
    with pytest.raises(ValueError, match="_fb"):
        parse_arch("pattennet_xx", {"n_dab": 2, "dab_mode": "channel_spatial"})
