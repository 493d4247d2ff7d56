"""Inference with trained NeoNet stages (NeoSeg: :mod:`neonet_toolkit.inference.seg`)."""
