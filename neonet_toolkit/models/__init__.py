"""Trained models on disk, below training and inference: resolve, verify and load them.

``seg``: NeoSeg/nnU-Net model folders (fold listing, registration of external models, label mapping by name,
the checkpoint check, and the verified one-load initialisation of nnU-Net's predictor). ``cls``: NeoCls fold
classifiers (loading, calibrated probabilities, the decision rule). ``cls_results``: the NeoCls result files.
Training, inference and evaluation all use this layer; it never imports them.
"""
