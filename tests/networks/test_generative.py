"""NeoGen units: ControlNet init/conditioning, DDIM sampler, seeded generation, ratio planning, metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neonet_toolkit.networks.diffusion import ddim_plan, ddim_sample, ddim_timesteps, make_noise_scheduler
from neonet_toolkit.networks.generative import (build_controlnet, build_unet, build_vae, controlled_unet_output,
                                                from_vae_output, init_controlnet_from_unet, to_vae_input)

LDM = {"channels": [8, 16], "num_res_blocks": 1, "norm_num_groups": 8, "attention_levels": [False, False],
       "num_head_channels": 8, "num_train_timesteps": 1000}
CN = {"conditioning_embedding_num_channels": [8, 8, 16]}  # 2 stride-2 convs = 4x
VAE = {"channels": [8, 8, 8], "latent_channels": 4, "norm_num_groups": 8, "num_res_blocks": 1,
       "attention_levels": [False, False, False]}  # every setting comes from the plans (no code default)


def _pair(class_conditional=False):
    torch.manual_seed(0)
    unet = build_unet(LDM, 4).eval()
    # MONAI zero-initialises the output conv and every resnet's conv2: randomise them so the U-Net is
    # non-trivial (as after training); the ControlNet then copies these weights
    for name, p in unet.named_parameters():
        if name.endswith("weight") and not bool(p.detach().any()):
            torch.nn.init.normal_(p, std=0.1)
    cn = build_controlnet(LDM, CN, 4, 4, num_class_embeds=2 if class_conditional else None).eval()
    init_controlnet_from_unet(cn, unet)
    return unet, cn


@pytest.mark.parametrize("class_conditional", [False, True])
def test_controlnet_at_init_reproduces_frozen_unet_exactly(class_conditional):
    unet, cn = _pair(class_conditional)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    cond = (torch.rand(2, 2, 16, 32, 32, generator=g) > 0.5).float()
    cls = torch.tensor([0, 1]) if class_conditional else None
    with torch.no_grad():
        ref = unet(x=x, timesteps=t)
        out = controlled_unet_output(unet, cn, x, t, cond, class_labels=cls)
    assert torch.equal(out, ref)
    # the shared weights really were copied (not just the zero residuals hiding a random copy)
    assert torch.equal(cn.conv_in.conv.weight, unet.conv_in.conv.weight)
    assert torch.equal(cn.down_blocks[0].resnets[0].conv1.conv.weight, unet.down_blocks[0].resnets[0].conv1.conv.weight)
    # and the ControlNet is trainable: one step on a non-trivial loss changes the output
    opt = torch.optim.SGD(cn.parameters(), lr=1e-2)
    loss = (controlled_unet_output(unet, cn, x, t, cond, class_labels=cls) - 1.0).pow(2).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert not torch.equal(controlled_unet_output(unet, cn, x, t, cond, class_labels=cls), ref)


def test_conditioning_embedding_must_land_on_latent_grid():
    with pytest.raises(ValueError, match="latent"):
        build_controlnet(LDM, {"conditioning_embedding_num_channels": [8, 16]}, 4, 4)


def test_full_resolution_conditioning_keeps_27_voxel_tumour():
    """A 3x3x3 tumour in a 48x96x96 mask: nearest resize to the 12x24x24 latent grid erases it,
    the strided conditioning embedding still sees it at the right latent voxels."""
    mask = torch.zeros(1, 2, 48, 96, 96)
    mask[:, 0, 8:40, 16:80, 16:80] = 1  # organ ROI
    z0, y0, x0 = 21, 41, 45  # 3x3x3 tumour 21..23, 41..43, 45..47
    with_tumour = mask.clone()
    with_tumour[:, 1, z0:z0 + 3, y0:y0 + 3, x0:x0 + 3] = 1
    assert int(with_tumour[:, 1].sum()) == 27
    nearest = torch.nn.functional.interpolate(with_tumour, size=(12, 24, 24), mode="nearest")
    assert int(nearest[:, 1].sum()) == 0  # what MONAI's ControlNetLatentDiffusionInferer would feed

    _, cn = _pair()
    emb = cn.controlnet_cond_embedding
    torch.nn.init.normal_(emb.conv_out.conv.weight, std=0.1)  # as after training (zero at init)
    with torch.no_grad():
        e_with = emb(with_tumour)
        e_without = emb(mask)
    assert e_with.shape[2:] == (12, 24, 24)  # exactly the latent grid
    diff = (e_with - e_without).abs().amax(dim=(0, 1))
    lz, ly, lx = (z0 + 1) // 4, (y0 + 1) // 4, (x0 + 1) // 4  # latent voxel holding the tumour centre
    assert diff[lz, ly, lx] > 1e-4
    # local: latent voxels farther than the receptive field do not change at all
    far = diff.clone()
    far[max(lz - 3, 0):lz + 4, max(ly - 3, 0):ly + 4, max(lx - 3, 0):lx + 4] = 0
    assert float(far.max()) == 0.0


def test_ddim_timesteps_strictly_decreasing_to_zero():
    for steps in (2, 3, 7, 10, 50, 999, 1000):
        ts = ddim_timesteps(steps, 1000)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
        plan = ddim_plan(steps, 1000)
        assert [p[1] for p in plan[:-1]] == ts[1:] and plan[-1][1] == -1
    for bad in (0, 1, 1001):
        with pytest.raises(ValueError):
            ddim_timesteps(bad, 1000)


def test_ddim_sampler_targets_next_called_timestep_and_is_exact_on_gaussian_data():
    sched = make_noise_scheduler(LDM)
    ac = sched.alphas_cumprod.double()
    called, trace = [], []
    s = 3.0  # data std well outside [-1, 1]: any clipping would show

    def oracle_eps(x, t):
        # exact ε-prediction for x0 ~ N(0, s^2): E[ε | x_t] = sqrt(1-a) x_t / (a s^2 + 1 - a)
        called.append(int(t[0]))
        a = float(ac[int(t[0])])
        return (np.sqrt(1 - a) * x.double() / (a * s * s + 1 - a)).float()

    g = torch.Generator().manual_seed(0)
    out = ddim_sample(oracle_eps, (4000, 1, 2, 2, 2), sched.alphas_cumprod, 25, g, trace=trace)
    assert called == ddim_timesteps(25, 1000)
    assert [tr["t"] for tr in trace] == called
    assert [tr["target"] for tr in trace[:-1]] == called[1:] and trace[-1]["target"] == -1
    # the deterministic DDIM ODE with the exact score maps N(0,1) to N(0, s^2); the discretisation
    # error shrinks with the step count (measured: 25 steps 2.84, 100 steps 2.96, 500 steps 2.99)
    errs = []
    for steps in (25, 100, 500):
        out = ddim_sample(oracle_eps, (4000, 1, 2, 2, 2), sched.alphas_cumprod, steps, torch.Generator().manual_seed(0))
        errs.append(abs(float(out.std()) / s - 1.0))
    assert errs[0] > errs[1] > errs[2] and errs[1] < 0.02 and errs[2] < 0.005, errs


def test_ddim_sampler_is_seeded():
    sched = make_noise_scheduler(LDM)
    f = lambda x, t: 0.1 * x  # noqa: E731
    a = ddim_sample(f, (1, 4, 2, 4, 4), sched.alphas_cumprod, 5, torch.Generator().manual_seed(3), eta=0.5)
    b = ddim_sample(f, (1, 4, 2, 4, 4), sched.alphas_cumprod, 5, torch.Generator().manual_seed(3), eta=0.5)
    c = ddim_sample(f, (1, 4, 2, 4, 4), sched.alphas_cumprod, 5, torch.Generator().manual_seed(4), eta=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _random_models(class_conditional=True):
    from neonet_toolkit.generation.generate import NeoGenModels

    unet, cn = _pair(class_conditional)
    for blk in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
        for p in blk.parameters():
            torch.nn.init.normal_(p, std=0.05)
    torch.manual_seed(5)
    vae = build_vae(VAE).eval()
    sched = make_noise_scheduler(LDM)
    return NeoGenModels(vae=vae, unet=unet, controlnet=cn, alphas_cumprod=sched.alphas_cumprod, scale_factor=0.8,
                        vae_config={**VAE, "input_intensity": {"scale": 2.0, "clip": 3.0}}, latent_shape=[4, 4, 8, 8],
                        class_conditional=class_conditional, checkpoint="test", device=torch.device("cpu"))


def test_seeded_generation_bit_identical_and_masked():
    from neonet_toolkit.generation.generate import generate_patch

    models = _random_models()
    label = np.zeros((2, 16, 32, 32), np.uint8)
    label[0, 2:14, 4:28, 4:28] = 1
    label[1, 6:10, 12:18, 12:18] = 1
    a = generate_patch(models, label, seed=11, steps=4, class_label=1)
    b = generate_patch(models, label, seed=11, steps=4, class_label=1)
    c = generate_patch(models, label, seed=12, steps=4, class_label=1)
    d = generate_patch(models, label, seed=11, steps=4, class_label=0)
    assert a.shape == (2, 16, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert np.all(a[0][label[0] == 0] == 0)
    assert np.array_equal(a[1], a[0] * label[1])  # TLCR: tumour channel = image * tumour mask
    other = label.copy()
    other[1] = 0
    other[1, 2:5, 4:7, 4:7] = 1
    assert not np.array_equal(generate_patch(models, other, seed=11, steps=4, class_label=1)[0], a[0])
    with pytest.raises(ValueError, match="class"):
        generate_patch(models, label, seed=11, steps=4)


def test_plan_entries_ratio_semantics_and_select_for_ratio():
    from neonet_toolkit.generation.generate import plan_entries
    from neonet_toolkit.preprocessing.synthetic_sets import select_for_ratio

    labels = {f"c{i:02d}": int(i < 5) for i in range(16)}  # 5 positive, 11 negative -> gap 6
    for ratio, n in ((0.25, 2), (0.5, 3), (0.75, 4), (1.0, 6)):
        info, entries = plan_entries(labels, ratio)
        assert info["gap"] == 6 and info["minority_class"] == 1
        assert len(entries) == n and all(e["label"] == 1 and labels[e["source_case"]] == 1 for e in entries)
    info, entries = plan_entries(labels, 1.0, n_majority=-1)
    maj = [e for e in entries if e["role"] == "majority"]
    assert len(maj) == 6 and all(e["label"] == 0 and labels[e["source_case"]] == 0 for e in maj)
    manifest = {**info, "entries": [dict(e, id=f"syn_{k:05d}") for k, e in enumerate(entries)]}
    for ratio, n in ((0.25, 2), (0.5, 3), (0.75, 4), (1.0, 6)):
        sel = select_for_ratio(manifest, ratio)
        assert len(sel) == n and all(e["role"] == "minority" for e in sel)
    assert len(select_for_ratio(manifest, 1.0, n_majority=6)) == 12
    # balanced 1:1 after adding the ratio-1.0 entries
    pos = sum(labels.values()) + len(select_for_ratio(manifest, 1.0))
    assert pos == len(labels) - sum(labels.values())
    with pytest.raises(ValueError):
        plan_entries(labels, 1.5)


def test_vae_intensity_mapping_round_trip_keeps_background_zero():
    cfg = {"input_intensity": {"scale": 2.5, "clip": 3.0}}
    x = torch.tensor([0.0, 1.0, -2.0, 5.0])
    y = to_vae_input(x, cfg)
    assert y[0] == 0 and torch.allclose(from_vae_output(y, cfg)[:3], x[:3])


def test_psnr_ssim_and_fid_behave():
    from neonet_toolkit.evaluation.image_metrics import PCAFeatures, fid, psnr, ssim, view_axes

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 32, 32, generator=g)
    noisy = x + 0.05 * torch.randn(x.shape, generator=g)
    assert float(psnr(x, x + 0.1, 1.0).mean()) == pytest.approx(20.0, abs=1e-3)
    assert float(ssim(x, x, 1.0).mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(noisy, x, 1.0).mean()) < 0.99
    assert view_axes([0, 1, 2]) == {"axial": 0, "sagittal": 2, "coronal": 1}
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16, 16)).astype(np.float32)
    b = rng.normal(size=(200, 16, 16)).astype(np.float32)
    c = (rng.normal(size=(200, 16, 16)) * 2 + 1).astype(np.float32)
    ex = PCAFeatures(8, size=16).fit(rng.normal(size=(200, 16, 16)).astype(np.float32))  # held-out fit
    same, other = fid(ex(a), ex(b)), fid(ex(a), ex(c))
    assert same < other and other > 10 * same


def test_torchvision_fid_extractor_requires_local_weights(tmp_path):
    from neonet_toolkit.evaluation.image_metrics import make_feature_extractor

    with pytest.raises(ValueError, match="local weights"):
        make_feature_extractor("radimagenet", None)
    with pytest.raises(FileNotFoundError):
        make_feature_extractor("radimagenet", str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not look like"):
        make_feature_extractor("radimagenet", str(bad))


def test_torchvision_fid_extractor_loads_local_state_dict(tmp_path):
    """The RadImageNet path with a locally saved ResNet-50 state_dict (random weights here: only the
    loading and feature mechanics are tested, no FID value is claimed)."""
    import torchvision

    from neonet_toolkit.evaluation.image_metrics import make_feature_extractor

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    f = tmp_path / "resnet50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, f)
    ex = make_feature_extractor("radimagenet", str(f))
    assert torch.equal(ex.net.conv1.weight, net.conv1.weight)
    slices = np.random.default_rng(0).normal(size=(3, 16, 32)).astype(np.float32)
    feats = ex.fit(slices)(slices)
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all()


def _alexnet_file(tmp_path, wrap: bool = False):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None)
    f = tmp_path / "alexnet.pth"
    sd = net.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}} if wrap else sd, f)
    return f, net


def test_lpips_loads_local_backbone_and_orders_distortions(tmp_path):
    """LPIPS with a locally saved AlexNet state_dict (random weights here: the loading and the
    metric's mechanics are tested, no published LPIPS value is claimed)."""
    pytest.importorskip("lpips")
    from neonet_toolkit.evaluation.image_metrics import LPIPSMetric, lpips_per_view

    f, net = _alexnet_file(tmp_path, wrap=True)
    m = LPIPSMetric(f, "alex")
    assert torch.equal(m.model.net.slice1[0].weight, net.features[0].weight)
    assert torch.equal(m.model.net.state_dict()["slice5.10.weight"], net.features[10].weight)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(2, 16, 32, 32)).astype(np.float32)
    roi = np.ones(vol.shape, bool)
    tf = [0, 1, 2]
    same = lpips_per_view(vol, vol.copy(), roi, tf, m)
    assert all(abs(same[v]) < 1e-6 for v in ("axial", "sagittal", "coronal", "average"))
    d = [lpips_per_view(vol, vol + s * rng.normal(size=vol.shape).astype(np.float32), roi, tf, m)["average"]
         for s in (0.1, 0.5, 2.0)]
    assert 0 < d[0] < d[1] < d[2], d
    with pytest.raises(ValueError, match="paired"):
        m(vol[0], vol[0][:3])


def test_lpips_needs_local_weights_and_names_the_fix(tmp_path):
    pytest.importorskip("lpips")
    from neonet_toolkit.evaluation.image_metrics import LPIPSMetric

    with pytest.raises(FileNotFoundError, match="--lpips-weights"):
        LPIPSMetric(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not look like torchvision alexnet"):
        LPIPSMetric(bad, "alex")
    f, _ = _alexnet_file(tmp_path)
    with pytest.raises(ValueError, match="does not look like torchvision vgg16"):
        LPIPSMetric(f, "vgg")
