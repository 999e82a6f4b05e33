"""SSL Studio engine: self-supervised training without Qt.

Layers (see docs/ARCHITECTURE.md): config -> data -> augment -> components ->
methods -> trainer -> events; the CLI and the studio are both listeners of the
trainer's event stream.
"""

__version__ = "0.1.0"
