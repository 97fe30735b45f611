"""Your own molecules: SDF, XYZ/extxyz or SMILES files as a modality (``--modality molecules``)."""
