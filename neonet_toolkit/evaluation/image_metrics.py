"""Image quality metrics for NeoGen (Tables 3-4): PSNR/SSIM (MONAI), FID per view with a pluggable 2D
feature extractor.

FID feature extractors (``make_feature_extractor``):

* ``pca`` (default, weight-free, in-domain): slices are resized to 16×16 and projected onto the
  leading principal components of real slices of that view. The basis is fitted on one half of the
  real cases (even positions) and FID is computed against the *other* half, because a PCA basis
  fitted on the very samples it then describes inflates their variance (few hundred slices, 256
  dimensions) and would bias FID. It uses real data only, so it is not the generator's own encoder,
  and has no trainable weights. Numbers are only comparable between runs that use the same real set
  and settings, never with published Inception/RadImageNet FIDs.
* ``radimagenet`` (torchvision ResNet-50 with RadImageNet weights) and ``inception`` (torchvision
  Inception-v3): need a local weights file (``state_dict`` saved with ``torch.save``); nothing is
  downloaded. Features are the 2048-d global-average-pooled activations.

LPIPS (``LPIPSMetric``, optional extra ``pip install neonet_toolkit[lpips]``): the ``lpips``
package's learned linear calibration layers (shipped inside the package) on an AlexNet / VGG-16 /
SqueezeNet backbone whose ImageNet weights come from a *local* torchvision ``state_dict`` file
(``--lpips-weights PATH``; nothing is downloaded). 2.5D: paired slices of each view (slices with
≥ 5 % ROI), intensities mapped to [-1, 1] with the real patches' 0.5–99.5 percentiles, averaged
per view and over the three views.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

VIEWS = ("axial", "sagittal", "coronal")


# ----------------------------------------------------------------------------- PSNR / SSIM
def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-item PSNR (N,) of (N, C, *spatial) tensors."""
    from monai.metrics import PSNRMetric

    return PSNRMetric(max_val=float(data_range), reduction="none")(pred.float(), target.float()).reshape(-1)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float, win_size: int = 7) -> torch.Tensor:
    """Per-item 3D SSIM (N,) with a Gaussian window no larger than the smallest side."""
    from monai.metrics import SSIMMetric

    w = int(min(win_size, *pred.shape[2:]))
    w = w if w % 2 == 1 else w - 1
    m = SSIMMetric(spatial_dims=pred.ndim - 2, data_range=float(data_range), win_size=w, reduction="none")
    return m(pred.float(), target.float()).reshape(-1)


# ----------------------------------------------------------------------------- views
def view_axes(transpose_forward) -> dict[str, int]:
    """Array axis (of a (D, H, W) nnU-Net-order patch) that each view slices along.

    Array axis i is world axis ``2 - transpose_forward[i]`` (x=0, y=1, z=2): axial slices are taken
    along z, sagittal along x, coronal along y.
    """
    world_of_axis = [2 - int(t) for t in transpose_forward]
    return {"axial": world_of_axis.index(2), "sagittal": world_of_axis.index(0), "coronal": world_of_axis.index(1)}


def view_slices(volumes: np.ndarray, rois: np.ndarray, axis: int, min_roi_fraction: float = 0.05,
                cases: slice | None = None) -> np.ndarray:
    """2D slices (M, a, b) of (N, D, H, W) ``volumes`` along ``axis`` whose ROI covers ≥ ``min_roi_fraction``.

    ``cases`` selects volumes first (e.g. ``slice(0, None, 2)`` for the even ones).
    """
    out = []
    sel = cases if cases is not None else slice(None)
    for vol, roi in zip(volumes[sel], rois[sel]):
        v = np.moveaxis(vol, axis, 0)
        r = np.moveaxis(roi, axis, 0)
        for s, m in zip(v, r):
            if m.mean() >= min_roi_fraction:
                out.append(s)
    if not out:
        raise ValueError("No slice with enough ROI to compute FID.")
    return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------- feature extractors
def _resize(slices: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(slices))[:, None].float()
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)


def robust_range(real_slices: np.ndarray) -> tuple[float, float]:
    """0.5-99.5 percentile intensity range of the real slices (shared by the 2D pretrained nets)."""
    lo, hi = np.percentile(real_slices, [0.5, 99.5])
    return float(lo), float(hi)


def to_unit_range(slices: np.ndarray, intensity_range: tuple[float, float] | None) -> np.ndarray:
    lo, hi = intensity_range or (float(slices.min()), float(slices.max()))
    return np.clip((slices - lo) / max(hi - lo, 1e-6), 0, 1)


class PCAFeatures:
    """Weight-free in-domain features: projection on the real slices' principal components."""

    name = "pca"
    heldout_fit = True  # fit on a disjoint half of the real cases (see module docstring)

    def __init__(self, n_components: int = 8, size: int = 16):
        self.n_components, self.size = int(n_components), int(size)
        self.mean = None
        self.basis = None

    def fit(self, real_slices: np.ndarray) -> "PCAFeatures":
        x = _resize(real_slices, self.size).flatten(1).double()
        self.mean = x.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(x - self.mean, full_matrices=False)
        k = int(min(self.n_components, vh.shape[0], max(2, x.shape[0] // 8)))
        self.basis = vh[:k].T
        return self

    def __call__(self, slices: np.ndarray) -> torch.Tensor:
        if self.basis is None:
            raise RuntimeError("PCAFeatures.fit(real_slices) first.")
        x = _resize(slices, self.size).flatten(1).double()
        return ((x - self.mean) @ self.basis).float()


class TorchvisionFeatures:
    """2048-d pooled features of a torchvision ResNet-50 (RadImageNet) or Inception-v3 from local weights."""

    heldout_fit = False

    def __init__(self, arch: str, weights_path: str | Path, device: str = "cpu", batch_size: int = 32,
                 intensity_range: tuple[float, float] | None = None):
        import torchvision

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"FID feature weights {path} not found. Download them once on a machine with "
                                    "internet access and pass the local file with --fid-weights.")
        if arch == "radimagenet":
            net, self.size = torchvision.models.resnet50(weights=None), 224
        elif arch == "inception":
            net, self.size = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False), 299
        else:
            raise ValueError(f"Unknown FID network {arch!r}; use pca, radimagenet or inception.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
        own = net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        backbone = [k for k in own if not k.startswith(("fc.", "AuxLogits."))]
        missing = [k for k in backbone if k not in usable]
        if len(missing) > 0.02 * len(backbone):
            raise ValueError(f"{path} does not look like {arch} weights: {len(missing)}/{len(backbone)} backbone "
                             f"tensors missing or of another shape (e.g. {missing[:3]}).")
        net.load_state_dict(usable, strict=False)
        net.fc = torch.nn.Identity()
        self.net = net.to(device).eval()
        self.name, self.device, self.batch_size = arch, device, int(batch_size)
        self.intensity_range = intensity_range
        self.weights_path = str(path)

    def fit(self, real_slices: np.ndarray) -> "TorchvisionFeatures":
        if self.intensity_range is None:
            self.intensity_range = robust_range(real_slices)
        return self

    @torch.no_grad()
    def __call__(self, slices: np.ndarray) -> torch.Tensor:
        x = to_unit_range(slices, self.intensity_range)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        feats = []
        for s in range(0, len(x), self.batch_size):
            t = _resize(x[s:s + self.batch_size], self.size).repeat(1, 3, 1, 1)
            feats.append(self.net(((t - mean) / std).to(self.device)).float().cpu())
        return torch.cat(feats)


LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}


class LPIPSUnavailable(RuntimeError):
    pass


class LPIPSMetric:
    """LPIPS distance between paired 2D slices; backbone weights from a local torchvision file."""

    def __init__(self, weights_path: str | Path, net: str = "alex", device: str = "cpu", batch_size: int = 32,
                 intensity_range: tuple[float, float] | None = None):
        try:
            import lpips
        except ImportError as e:
            raise LPIPSUnavailable("LPIPS needs the 'lpips' package: pip install 'neonet_toolkit[lpips]'.") from e
        if net not in LPIPS_NETS:
            raise ValueError(f"Unknown LPIPS network {net!r}; choose one of {sorted(LPIPS_NETS)}.")
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS backbone weights {path} not found. Save torchvision's ImageNet {LPIPS_NETS[net]} weights "
                "once on a machine with internet access (torch.save(model.state_dict(), PATH)) and pass the "
                "local file with --lpips-weights.")
        # pnet_rand=True: build the backbone without downloading; its weights are loaded from `path` below.
        # pretrained=True loads the package's own linear layers (shipped in the wheel).
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = model.net.state_dict()
        new, missing = {}, []
        for k, v in own.items():  # lpips keys are "slice<K>.<index in features>.<param>"
            rest = k.split(".", 1)[1]
            src = state.get(f"features.{rest}", state.get(rest))
            if src is None or tuple(src.shape) != tuple(v.shape):
                missing.append(k)
            else:
                new[k] = src
        if missing:
            raise ValueError(f"{path} does not look like torchvision {LPIPS_NETS[net]} weights: {len(missing)}/"
                             f"{len(own)} backbone tensors missing or of another shape (e.g. {missing[:3]}).")
        model.net.load_state_dict(new)
        self.model = model.to(device).eval()
        self.net, self.device, self.batch_size = net, device, int(batch_size)
        self.intensity_range = intensity_range
        self.weights_path = str(path)

    def fit(self, real_slices: np.ndarray) -> "LPIPSMetric":
        self.intensity_range = robust_range(real_slices)
        return self

    def _to_input(self, slices: np.ndarray) -> torch.Tensor:
        x = to_unit_range(slices, self.intensity_range) * 2 - 1
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
        if min(t.shape[-2:]) < 32:  # AlexNet's stride-4 stem + 3 max-pools need >= ~32 pixels
            t = torch.nn.functional.interpolate(t, size=tuple(max(32, s) for s in t.shape[-2:]), mode="bilinear",
                                                align_corners=False)
        return t.repeat(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, a_slices: np.ndarray, b_slices: np.ndarray) -> np.ndarray:
        if a_slices.shape != b_slices.shape:
            raise ValueError(f"LPIPS needs paired slices, got {a_slices.shape} vs {b_slices.shape}.")
        a, b = self._to_input(a_slices), self._to_input(b_slices)
        out = [self.model(a[s:s + self.batch_size].to(self.device), b[s:s + self.batch_size].to(self.device))
               .flatten().float().cpu() for s in range(0, len(a), self.batch_size)]
        return torch.cat(out).numpy()


def lpips_per_view(real: np.ndarray, other: np.ndarray, rois: np.ndarray, transpose_forward,
                   metric: LPIPSMetric, min_roi_fraction: float = 0.05) -> dict:
    """Mean LPIPS between paired (N, D, H, W) volumes per view (slices chosen by the real ROI) and the average."""
    out = {}
    for view, axis in view_axes(transpose_forward).items():
        a = view_slices(real, rois, axis, min_roi_fraction)
        b = view_slices(other, rois, axis, min_roi_fraction)
        if metric.intensity_range is None:
            metric.fit(a)
        out[view] = float(np.mean(metric(a, b)))
    out["average"] = float(np.mean([out[v] for v in VIEWS]))
    return out


def make_feature_extractor(name: str = "pca", weights_path: str | None = None, device: str = "cpu", **kw):
    if name == "pca":
        return PCAFeatures(**kw)
    if weights_path is None:
        raise ValueError(f"FID network {name!r} needs local weights (--fid-weights PATH); nothing is downloaded. "
                         "Use --fid-network pca for the weight-free fallback.")
    return TorchvisionFeatures(name, weights_path, device=device)


def fid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    from monai.metrics import FIDMetric

    return float(FIDMetric()(fake_feats.double(), real_feats.double()))


def fid_per_view(real: np.ndarray, real_roi: np.ndarray, fake: np.ndarray, fake_roi: np.ndarray,
                 transpose_forward, extractor_factory, min_roi_fraction: float = 0.05) -> dict:
    """FID for axial, sagittal and coronal slices and their average.

    ``extractor_factory()`` returns a fresh extractor with ``fit(real_slices)`` and ``__call__(slices)``;
    an extractor with ``heldout_fit`` is fitted on the even real cases and FID uses the odd ones.
    """
    axes = view_axes(transpose_forward)
    out = {}
    for view in VIEWS:
        ex = extractor_factory()
        if getattr(ex, "heldout_fit", False):
            if len(real) < 2:
                raise ValueError("FID with the pca extractor needs at least 2 real cases.")
            ex.fit(view_slices(real, real_roi, axes[view], min_roi_fraction, slice(0, None, 2)))
            rs = view_slices(real, real_roi, axes[view], min_roi_fraction, slice(1, None, 2))
        else:
            rs = view_slices(real, real_roi, axes[view], min_roi_fraction)
            ex.fit(rs)
        fs = view_slices(fake, fake_roi, axes[view], min_roi_fraction)
        out[view] = fid(ex(rs), ex(fs))
        out[f"{view}_n_slices"] = {"real": int(len(rs)), "synthetic": int(len(fs))}
    out["average"] = float(np.mean([out[v] for v in VIEWS]))
    return out


def fid_per_view_with_ci(real: np.ndarray, real_roi: np.ndarray, fake: np.ndarray, fake_roi: np.ndarray,
                         transpose_forward, extractor_factory, n_boot: int = 200, alpha: float = 0.05,
                         seed: int = 0, min_roi_fraction: float = 0.05) -> dict:
    """:func:`fid_per_view` (same slices, same extractor fits, same point estimates) plus percentile bootstrap
    confidence intervals over **patches**.

    Each replicate resamples the real (reference) patches and the synthetic patches with replacement, each
    patch with all its slices, the same patch draw for the three views, so the interval of the average
    accounts for the views sharing patches. Features are computed once per patch; only FID is recomputed.
    Returns ``{view: fid, "average": fid, "ci": {view|"average": [lo, hi]}, "n_boot": B, ...}``.
    """
    axes = view_axes(transpose_forward)
    feats = {}  # view -> (list of per-real-patch features, list of per-fake-patch features)
    out: dict = {}
    for view in VIEWS:
        ex = extractor_factory()
        real_cases = np.arange(len(real))
        if getattr(ex, "heldout_fit", False):
            if len(real) < 2:
                raise ValueError("FID with the pca extractor needs at least 2 real cases.")
            ex.fit(view_slices(real, real_roi, axes[view], min_roi_fraction, slice(0, None, 2)))
            real_cases = real_cases[1::2]
        else:
            ex.fit(view_slices(real, real_roi, axes[view], min_roi_fraction))

        def per_patch(vols, rois, cases):
            res = []
            for i in cases:
                try:
                    res.append(ex(view_slices(vols[i:i + 1], rois[i:i + 1], axes[view], min_roi_fraction)))
                except ValueError:  # a patch without a slice of enough ROI in this view contributes nothing
                    res.append(None)
            return res

        feats[view] = (per_patch(real, real_roi, real_cases), per_patch(fake, fake_roi, range(len(fake))))
        rf = torch.cat([f for f in feats[view][0] if f is not None])
        ff = torch.cat([f for f in feats[view][1] if f is not None])
        out[view] = fid(rf, ff)
        out[f"{view}_n_slices"] = {"real": int(len(rf)), "synthetic": int(len(ff))}
    out["average"] = float(np.mean([out[v] for v in VIEWS]))
    rng = np.random.default_rng(seed)
    n_real, n_fake = len(feats[VIEWS[0]][0]), len(feats[VIEWS[0]][1])
    boots = {v: [] for v in (*VIEWS, "average")}
    for _ in range(int(n_boot)):
        ri, fi = rng.integers(0, n_real, n_real), rng.integers(0, n_fake, n_fake)
        vals = []
        for view in VIEWS:
            rf = [feats[view][0][i] for i in ri if feats[view][0][i] is not None]
            ff = [feats[view][1][i] for i in fi if feats[view][1][i] is not None]
            vals.append(fid(torch.cat(rf), torch.cat(ff)) if len(rf) > 1 and len(ff) > 1 else float("nan"))
            boots[view].append(vals[-1])
        boots["average"].append(float(np.mean(vals)))
    out["ci"] = {k: [float(np.nanpercentile(v, 100 * alpha / 2)), float(np.nanpercentile(v, 100 * (1 - alpha / 2)))]
                 if n_boot and np.isfinite(v).any() else None for k, v in boots.items()}
    out["n_boot"], out["ci_level"] = int(n_boot), 1 - float(alpha)
    out["n_patches"] = {"real": int(n_real), "synthetic": int(n_fake)}
    return out
