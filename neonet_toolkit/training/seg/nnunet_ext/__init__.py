"""Directory for nnU-Net's ``nnUNet_extTrainer`` lookup (see docs/neoseg.md).

nnU-Net imports every module in this folder as a top-level module and looks for the trainer
class by name; ``neonet_seg_trainers`` re-exports the NeoSeg trainers from the package.
"""
