"""Predict liver/tumour masks for a folder of images with a NeoSeg (or any nnU-Net) model.

Everything goes through nnU-Net's ``nnUNetPredictor`` (sliding window, Gaussian weighting,
mirroring, export to the original image space), so results are those of ``nnUNetv2_predict``
with the same model and folds. For a model registered from another group
(:func:`neonet_toolkit.training.seg.masks.register_model`), the written masks are relabelled
by name into the dataset's label ids.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Iterable, Sequence

from neonet_toolkit import paths
from neonet_toolkit.dataset.labels import remap_labels
from neonet_toolkit.training.seg.masks import (
    SegCheckpointError,
    check_model_folder,
    check_seg_checkpoint,
    default_model_folder,
    label_map_by_name,
    model_folds,
    registered_model,
)
from neonet_toolkit.training.seg.trainers import TRAINERS
from neonet_toolkit.utilities.checkpoints import load_verified_checkpoint
from neonet_toolkit.utilities.devices import get_device
from neonet_toolkit.utilities.io import atomic_path, load_json

logger = logging.getLogger(__name__)


def _device(name: str):
    import torch


    dev = get_device(name)
    return torch.device("cuda", dev.index or 0) if dev.type == "cuda" else dev


NEOSEG_TRAINERS = {c.__name__: c for c in TRAINERS.values()}  # by trainer name, as checkpoints record it


def initialize_predictor(predictor, model_folder: str | Path, folds: Sequence[int | str],
                         checkpoint_name: str = "checkpoint_final.pth", trust_checkpoints: bool = False) -> None:
    """Initialise an ``nnUNetPredictor`` from a model folder, as ``initialize_from_trained_model_folder`` does,
    but loading every checkpoint with ``weights_only=True`` under the allow-list and taking NeoSeg's trainers
    from NeoNet itself (nnU-Net's trainer search by name is used only for other trainers: in nnU-Net 2.8.1 it
    iterates ``sys.modules`` while module attribute access may import, which fails on some installations with
    "dictionary changed size during iteration"). ``trust_checkpoints`` hands the folder to nnU-Net's own
    loader unchanged (``weights_only=False``)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import (
        determine_num_input_channels,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_folder = Path(model_folder)
    if trust_checkpoints:
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint_name)
        return
    dataset_json = load_json(model_folder / "dataset.json")
    plans_manager = PlansManager(load_json(model_folder / "plans.json"))
    files = [model_folder / f"fold_{f}" / checkpoint_name for f in folds]
    checkpoints = [load_verified_checkpoint(f) for f in files]
    # what each file says it is, before a network is built from it (an edited trainer_name, a classifier fold)
    names = [check_seg_checkpoint(c, f, model_folder, plans_manager.available_configurations)
             for c, f in zip(checkpoints, files)]
    if len(set(names)) > 1:
        raise SegCheckpointError(f"The folds of {model_folder} record different trainers "
                                 f"{dict(zip(map(str, files), names))}: one model's folds share one trainer. Replace "
                                 "the edited checkpoint(s) with the originals.")
    first = checkpoints[0]
    trainer_name = names[0]
    configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
    trainer_class = NEOSEG_TRAINERS.get(trainer_name)
    if trainer_class is None:
        try:
            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        except (RuntimeError, AssertionError, ImportError) as e:
            raise SegCheckpointError(
                f"{files[0]} records trainer_name {trainer_name!r}, which is neither a NeoSeg trainer "
                f"({sorted(NEOSEG_TRAINERS)}) nor an nnU-Net trainer class (searched nnunetv2.training.nnUNetTrainer "
                f"and nnUNet_extTrainer: {type(e).__name__}). A model trained with your own trainer: add its folder "
                "to nnUNet_extTrainer. Otherwise the checkpoint was edited: replace it with the original.") from None
    if "plans_manager" not in inspect.signature(trainer_class.build_network_architecture).parameters:
        # a trainer with nnU-Net's old build signature: nnU-Net's own loader knows both (checked files above)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint_name)
        return
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    parameters = [c["network_weights"] for c in checkpoints]
    for f, weights in zip(files, parameters):
        try:
            network.load_state_dict(weights)
        except RuntimeError as e:
            raise SegCheckpointError(
                f"The weights in {f} do not fit the {trainer_name} network built from {model_folder / 'plans.json'} "
                f"({str(e).strip().splitlines()[0][:200]}): the checkpoint was edited or belongs to another model. "
                "Replace it with the original, or retrain that fold.") from None
    network.load_state_dict(parameters[0])
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, first.get("inference_allowed_mirroring_axes"))


def relabel_files(files: Iterable[Path], label_map: dict[int, int], reader_writer) -> None:
    """Rewrite segmentation files with ``label_map`` applied (atomic per file)."""
    for f in files:
        seg, props = reader_writer.read_seg(str(f))
        out = remap_labels(seg[0], label_map)
        suffix = "".join(Path(f).suffixes)
        with atomic_path(f, suffix=suffix) as tmp:
            reader_writer.write_seg(out, str(tmp), props)


@paths.with_nnunet_environment
def predict_folder(input_folder: str | Path, output_folder: str | Path, dataset: int | str | None = None,
                   model_folder: str | Path | None = None, arch: str | None = None,
                   folds: Sequence[int | str] | None = None, device: str = "auto",
                   checkpoint_name: str = "checkpoint_final.pth", tile_step_size: float = 0.5,
                   use_mirroring: bool = True, save_probabilities: bool = False, overwrite: bool = True,
                   num_processes: int = 0, label_names: dict | None = None,
                   trust_checkpoints: bool = False) -> list[Path]:
    """Segment every case of ``input_folder`` (nnU-Net naming ``CASE_0000.nii.gz``) into ``output_folder``.

    Args:
        dataset: NeoNet dataset; with ``model_folder`` unset the registered model, else NeoSeg's result
            folder for ``arch`` (default SwinUNETR) is used; predicted labels are mapped onto its ids.
        folds: folds to ensemble (default: every trained fold of the model).
        num_processes: 0 predicts in this process (no worker pools); >0 uses nnU-Net's pools.
    Returns the written segmentation files.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor


    paths.ensure_environment()
    if model_folder is None:
        if dataset is None:
            raise ValueError("predict_folder needs a dataset (to find its NeoSeg model) or a model_folder.")
        model_folder = default_model_folder(dataset, arch)
    model_folder = Path(model_folder)
    folds = list(folds) if folds is not None else None
    check_model_folder(model_folder, folds, trust_checkpoints, checkpoint_name=checkpoint_name)
    folds = folds if folds is not None else model_folds(model_folder)
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise FileNotFoundError(f"Input folder {input_folder} does not exist.")
    dev = _device(device)
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=True)
    initialize_predictor(predictor, model_folder, folds, checkpoint_name, trust_checkpoints)
    output_folder.mkdir(parents=True, exist_ok=True)
    logger.info("NeoSeg: predicting %s with %s folds %s on %s", input_folder, model_folder, folds, dev)
    if num_processes > 0:
        predictor.predict_from_files(str(input_folder), str(output_folder), save_probabilities=save_probabilities,
                                     overwrite=overwrite, num_processes_preprocessing=num_processes,
                                     num_processes_segmentation_export=num_processes)
    else:
        predictor.predict_from_files_sequential(str(input_folder), str(output_folder),
                                                save_probabilities=save_probabilities, overwrite=overwrite)
    model_json = load_json(model_folder / "dataset.json")
    ending = model_json["file_ending"]
    written = sorted(p for p in output_folder.iterdir() if p.name.endswith(ending))
    if dataset is not None:
        name = paths.find_dataset_name(dataset)
        ds_json = load_json(paths.nnunet_raw() / name / "dataset.json")
        reg = registered_model(name) or {}
        names = label_names if label_names is not None else reg.get("label_names") or None
        label_map = label_map_by_name(model_json["labels"], ds_json["labels"], names, where=str(model_folder))
        if any(k != v for k, v in label_map.items()):
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            rw = PlansManager(str(model_folder / "plans.json")).image_reader_writer_class()
            relabel_files(written, label_map, rw)
            logger.info("Relabelled %d prediction(s) by name: %s", len(written), label_map)
    return written
