"""Modality adapters for unite-sci (installed as ``unite_sci_modalities``).

The folder keeps its short name in the repository; it is installed under the import name
``unite_sci_modalities`` so it never clashes with another distribution's top-level ``modalities``
package. Adapters reach the core through the ``unite_sci.adapters`` entry-point group (see setup.cfg):
the core never imports this package.
"""
