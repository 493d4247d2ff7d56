"""Predict liver/tumour masks for a folder of images with a NeoSeg (or any nnU-Net) model.

Everything goes through nnU-Net's ``nnUNetPredictor`` (sliding window, Gaussian weighting,
mirroring, export to the original image space), so results are those of ``nnUNetv2_predict``
with the same model and folds. For a model registered from another group
(:func:`neonet_toolkit.models.seg.register_model`), the written masks are relabelled
by name into the dataset's label ids.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

from neonet_toolkit import paths
from neonet_toolkit.dataset.labels import remap_labels
from neonet_toolkit.models.seg import (
    check_model_folder,
    default_model_folder,
    initialize_predictor,
    label_map_by_name,
    model_folds,
    registered_model,
)
from neonet_toolkit.utilities.devices import get_device
from neonet_toolkit.utilities.io import atomic_path, load_json

logger = logging.getLogger(__name__)


def _device(name: str):
    import torch


    dev = get_device(name)
    return torch.device("cuda", dev.index or 0) if dev.type == "cuda" else dev


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
    # each checkpoint is verified by its one load, in initialize_predictor
    check_model_folder(model_folder, folds, trust_checkpoints, checkpoint_name=checkpoint_name, verify=False)
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
