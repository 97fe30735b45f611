"""The shipped Fashion-MNIST feature network: the same image metrics on every machine.

The image metrics (fd, precision / recall, class agreement; ``domain.py``) live in the features of a small
classifier (``classifier.py``). Trained on first use on each machine, that classifier made the fd of the same
2,000 samples read 7.56, 11.17 or 7.92 when only its training seed changed: a number that depends on which
machine scored it cannot rank two runs. For Fashion-MNIST the network therefore ships with the package: one
file of float16 weights (about 320 KB) made by this module's ``main`` and checked against a pinned SHA-256 at
every load. Data sets without a shipped network (MNIST-5k, IDX, a user's folder) still train theirs once per
machine, and their scores say so.

Rebuild it (deterministic: CPU, one thread, seeded, deterministic kernels; about 2 CPU-minutes), then paste
the SHA-256 it prints into :data:`SHA256`::

    python -m unite_sci_modalities.images.feature_net

The file holds ``{"format", "weights" (float16 state dict), "meta" (JSON: recipe, training and test image
names and counts, test accuracy, the command)}``; nothing in it depends on the time or the machine.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from unite_sci.errors import DataError
from unite_sci.files import atomic_write, file_hash

from .classifier import Classifier, Recipe, SmallCNN, as_arrays, chance_accuracy, train_net

FORMAT = "unite-sci-image-features/1"
PATH = Path(__file__).resolve().parent / "pretrained" / "fashion_mnist-smallcnn.pt"
SHA256 = "81534b760f5c219ccbbdf0ff9bd8e3c7bdc0758a0369a2a13759cba82f03a0cb"
COMMAND = "python -m unite_sci_modalities.images.feature_net"
RECIPE = Recipe()  # the default recipe: 2 epochs, seed 0, 128 features
# The image form the network was trained on; any other form (size, fit, channels) trains its own classifier.
FORM = {"dataset": "fashion_mnist", "image_size": 32, "fit": "pad", "channels": 1, "num_classes": 10}


def applies(cfg: Any, channels: int) -> bool:
    """Whether an image config's feature classifier is the shipped one: Fashion-MNIST in the shipped form and
    recipe (``data.classifier_epochs`` at its default). ``num_train`` and the split seed do not matter: the
    network is fixed and only scores images."""
    form = {"dataset": str(cfg.dataset), "image_size": cfg.image_size, "fit": str(cfg.fit), "channels": channels,
            "num_classes": cfg.num_classes}
    return form == FORM and cfg.classifier_epochs == RECIPE.epochs


def load(path: Path | None = None, sha256: str | None = None) -> tuple[SmallCNN, dict[str, Any]]:
    """The shipped network (float32, eval mode) and its metadata; DataError in one line naming the file when it
    is missing, its SHA-256 is not the pinned one, or it cannot be read."""
    path = PATH if path is None else Path(path)
    if not path.is_file():
        raise DataError(f"{path}: the shipped feature network is missing; rebuild it with: {COMMAND}")
    pinned = SHA256 if sha256 is None else sha256
    if file_hash(path) != pinned:
        raise DataError(f"{path}: SHA-256 is not the pinned {pinned[:12]} (damaged or edited); restore it from "
                        f"the repository or rebuild it with: {COMMAND}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(state["meta"])
        net = SmallCNN(FORM["channels"], FORM["num_classes"], RECIPE.widths, RECIPE.features)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["weights"].items()})
    except Exception as err:  # a file with the pinned hash is readable: this is a torch incompatibility
        raise DataError(f"{path}: cannot load the shipped feature network ({type(err).__name__}: {err})") from err
    if state.get("format") != FORMAT:
        raise DataError(f"{path}: format {state.get('format')!r}, expected {FORMAT!r}")
    return net.eval(), meta


def classifier(test: Any, test_name: str, path: Path | None = None) -> Classifier:
    """The shipped network as a :class:`Classifier`; its test accuracy is the stored one when ``test_name`` is
    the test split it was measured on, else measured on ``test`` (inference only, seconds)."""
    path = PATH if path is None else Path(path)
    net, meta = load(path)
    clf = Classifier(net, RECIPE, meta["train_name"], path, float("nan"), test_name, meta)
    clf.test_accuracy = (float(meta["test_accuracy"]) if meta["test_name"] == test_name
                         else clf.accuracy(*as_arrays(test)))
    clf.chance, clf.shipped = chance_accuracy(test.labels), True
    return clf


def build(out: Path = PATH, threads: int = 1) -> dict[str, Any]:
    """Train the network on the default Fashion-MNIST train split (55,000 images, 32 px padded) with
    :data:`RECIPE`, store it as float16 and measure its test accuracy as stored (10,000 test images)."""
    from .adapter import ImageAdapter, ImageConfig

    torch.set_num_threads(threads)  # reductions split over threads would change the last bits
    torch.use_deterministic_algorithms(True)
    adapter = ImageAdapter(ImageConfig())
    splits = adapter.build_splits()
    images, labels = as_arrays(splits["train"])
    net = train_net(images, labels, FORM["num_classes"], RECIPE, progress=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    clf = Classifier(net.eval(), RECIPE, adapter.data_name("train"), out, float("nan"), adapter.data_name("test"))
    accuracy = clf.accuracy(*as_arrays(splits["test"]))
    meta = {"recipe": asdict(RECIPE), "form": FORM, "train_name": adapter.data_name("train"),
            "num_train": len(images), "test_name": adapter.data_name("test"), "num_test": len(splits["test"]),
            "test_accuracy": round(accuracy, 6), "weights_dtype": "float16", "command": COMMAND}
    state = {"format": FORMAT, "weights": half, "meta": json.dumps(meta, sort_keys=True)}
    atomic_write(out, lambda f: torch.save(state, f), binary=True)
    return {**meta, "path": str(out), "bytes": out.stat().st_size, "sha256": file_hash(out)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the shipped Fashion-MNIST feature network (see module doc)")
    parser.add_argument("--out", type=Path, default=PATH, help=f"where to write it (default {PATH})")
    args = parser.parse_args(argv)
    info = build(args.out)
    print(json.dumps(info, indent=1))
    print(f"paste into unite_sci_modalities.images.feature_net.SHA256: {info['sha256']}")


if __name__ == "__main__":
    main()
