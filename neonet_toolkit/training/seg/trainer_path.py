"""``python -m neonet_toolkit.training.seg.trainer_path`` prints the folder for ``nnUNet_extTrainer``.

    export nnUNet_extTrainer=$(python -m neonet_toolkit.training.seg.trainer_path)
"""
from neonet_toolkit.training.seg import trainer_dir

if __name__ == "__main__":
    print(trainer_dir())
