"""unite-sci: single-stage generative modelling of scientific data (UNITE)."""
__version__ = "0.1.0"
