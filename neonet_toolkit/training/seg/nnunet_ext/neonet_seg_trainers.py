"""Re-export of the NeoSeg trainers for nnU-Net's ``nnUNet_extTrainer`` search (do not add code here)."""
from neonet_toolkit.training.seg.trainers import (  # noqa: F401
    NeoSegTrainer,
    NeoSegTrainer_DynUNet,
    NeoSegTrainer_nnUNet,
    NeoSegTrainer_SegResNet,
    NeoSegTrainer_UNet,
)
