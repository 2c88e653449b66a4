"""clipblind: mine CLIP-blind image pairs and package them as an MMVP-style benchmark."""

__version__ = "0.1.0"
