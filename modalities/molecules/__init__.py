"""Molecules: the one home of molecule code that every molecule data set uses (the adapter machinery in
``base.py``; bonds, geometry, io, rendering, metrics and physics checks), and your own SDF, XYZ/extxyz or
SMILES files as a modality (``--modality molecules``, ``adapter.py``)."""
