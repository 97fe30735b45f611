"""Benchmarks that reproduce the paper's protocols (installed as ``unite_sci_benchmarks``)."""
