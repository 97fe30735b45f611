"""Trained models shipped with unite-sci: ``<name>.pt`` (weights to sample with, no optimiser state) beside
``<name>.card.yaml`` (data, recipe, training time, measured numbers, sha256). Installed as package data of
``unite_sci_models`` and found through its ``unite_sci.models`` entry point; nothing here is imported.
See docs/models.md; ``unite-sci list`` shows them, ``unite-sci ship`` makes them from a run."""
