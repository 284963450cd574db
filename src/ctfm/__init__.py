"""ctfm: score 3D CT foundation models on the CVPR26 benchmark and its synthetic twin."""

__version__ = "0.1.0"
