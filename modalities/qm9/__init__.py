"""QM9 as a data set of the molecule modality: its data, EDM's split and property conditions (the molecule
code itself, adapter machinery, metrics, exports and physics checks, is ``molecules/``'s)."""
