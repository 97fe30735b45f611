"""unite-sci: single-stage generative modelling of scientific data (UNITE)."""
__version__ = "0.1.0"


def load(checkpoint, device: str = "auto", use_ema=None, overrides=()):
    """A trained checkpoint (a path, or a shipped model's name: ``unite-sci list``) as a tool (encode /
    decode / reconstruct / sample): see :mod:`unite_sci.api`. Imported on first use, so ``import unite_sci``
    stays light."""
    from .api import load as _load

    return _load(checkpoint, device, use_ema, overrides)
