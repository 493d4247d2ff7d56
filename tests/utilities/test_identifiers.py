"""ResultLayout: every result folder built and parsed in one place, one "finished" rule per artefact kind."""
from __future__ import annotations

import pytest

from neonet_toolkit import paths
from neonet_toolkit.utilities import identifiers as ids
from neonet_toolkit.utilities.identifiers import (
    FINISHED_RULES,
    PLANS_NAME,
    ClsRunId,
    NnUNetModelId,
    ResultLayout,
    UnsafeNameError,
)

DS = "Dataset501_Phantom"


@pytest.fixture
def layout(isolated_env) -> ResultLayout:
    (isolated_env / "neonet_results" / DS).mkdir()
    return ResultLayout.for_dataset(DS)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


def test_for_dataset_resolves_an_id_once_and_carries_the_folders(isolated_env):
    (isolated_env / "nnUNet_raw" / DS).mkdir()
    lay = ResultLayout.for_dataset(501)
    assert lay.dataset_name == DS and lay.plans_name == PLANS_NAME
    assert lay.preprocessed == isolated_env / "nnUNet_preprocessed" / DS
    assert lay.results == isolated_env / "neonet_results" / DS
    assert lay.nnunet_results == isolated_env / "nnUNet_results" / DS
    assert ResultLayout.for_dataset(lay) is lay  # passed down, not resolved again
    assert ResultLayout.for_dataset(lay, "OtherPlans").plans_name == "OtherPlans"
    assert ids.dataset_folders(501) == (DS, lay.preprocessed, lay.results)
    (isolated_env / "nnUNet_raw" / DS).rmdir()
    assert paths.find_dataset_name(lay) == DS == str(lay)  # no folder search for a resolved context
    assert ids.stage_fold_folder(lay, "vae", 0) == lay.fold_folder("vae", 0)


def test_stage_fold_and_checkpoint_round_trip(layout):
    f = layout.fold_folder("vae", 3)
    assert f == layout.results / f"vae__{PLANS_NAME}" / "fold_3"
    assert layout.checkpoint("vae", 3) == f / "checkpoint_final.pth"
    assert ResultLayout.parse_stage_folder_name(f.parent.name) == ("vae", PLANS_NAME)
    assert ResultLayout.parse_fold_folder_name(f.name) == 3
    assert ids.stage_fold_folder(DS, "vae", 3) == f  # module helper delegates
    with pytest.raises(ValueError, match="not a '<stage>__<plans>'"):
        ResultLayout.parse_stage_folder_name("vae")


@pytest.mark.parametrize("name", ["fold_0.overwriting", "new-fold_1.overwriting", "fold_x", "fold_", "xfold_1"])
def test_the_one_fold_parser_refuses_what_is_not_a_fold(name):
    assert ResultLayout.parse_fold_folder_name(name) is None


def test_staging_folder_is_never_taken_for_a_fold(tmp_path):
    f = tmp_path / "fold_2"
    f.mkdir()
    ResultLayout.staging_fold_folder(f).mkdir()
    ResultLayout.staging_fold_folder(f, prefix="new-").mkdir()
    assert ResultLayout.fold_folders(tmp_path) == {2: f}


def test_classifier_run_and_report_folders_round_trip(layout):
    run = ClsRunId("pattennet", 0.5, "pred", "nested", "oversample").name
    root = layout.stage_root(run)
    stage_dir, plans = ResultLayout.parse_stage_folder_name(root.name)
    assert plans == PLANS_NAME and ids.parse_cls_run_name(stage_dir) == ClsRunId("pattennet", 0.5, "pred",
                                                                                   "nested", "oversample")
    assert layout.report_folder("gen_evaluation", 1) == layout.results / f"gen_evaluation__{PLANS_NAME}" / "fold_1"
    assert ids.parse_cls_run_name(
        ResultLayout.parse_stage_folder_name(layout.report_folder("cls_evaluation").name)[0]) is None
    assert layout.seg_evaluation_folder == layout.results / "evaluation" / "seg"
    f = layout.shortcut_check_file(2, 0.5, "pred")
    assert f == layout.results / f"cls_shortcut__{PLANS_NAME}" / "fold_2_r0.5_pred.json"
    assert layout.shortcut_check_files() == []
    _touch(f)
    assert layout.shortcut_check_files() == [f]


@pytest.mark.parametrize("arch,crop,arm,name", [
    ("pattennet", "gt", "synthetic", "cls_pattennet_auto_esnested"),
    ("pattennet_fine", "pred", "synthetic", "cls_pattennet_fine_auto_pred_esnested"),
    ("resnet10", "gt", "oversample", "cls_resnet10_auto_over_esnested"),
])
def test_auto_ratio_run_name_round_trip(arch, crop, arm, name):
    rid = ClsRunId(arch, "auto", crop, "nested", arm)
    assert rid.name == name == ids.cls_run_name(arch, "AUTO", crop, "nested", arm)
    back = ids.parse_cls_run_name(name)
    assert back == rid and back.ratio == "auto" and back.is_auto and back.arch == arch
    # fixed-ratio names are unchanged and never read as auto
    assert ids.cls_run_name(arch, 0.5, crop, "nested", arm).replace("_0.5", "_auto") == name
    assert not ids.parse_cls_run_name(ids.cls_run_name(arch, 1.0, crop, "nested", arm)).is_auto


def test_auto_ratio_needs_the_nested_protocol():
    with pytest.raises(ValueError, match="nested"):
        ids.cls_run_name("pattennet", "auto", "gt", "val")
    with pytest.raises(ValueError, match="nested"):
        ClsRunId("pattennet", "auto", early_stopping="inner")
    assert ids.parse_cls_run_name("cls_pattennet_auto") is None  # would be the val protocol: never written
    assert ids.parse_cls_run_name("cls_pattennet_1").ratio == 1.0


def test_synthetic_set_folder_round_trip_and_finished_rule(layout):
    rid = ids.GenRunId("synthetic", autoencoder="vqvae", objective="rflow", generator="dm")
    d = layout.fold_folder(rid.name, 0)
    d.mkdir(parents=True)
    assert layout.synthetic_sets(0) == {}  # no manifest yet: not finished
    _touch(d / "manifest.json")
    assert layout.synthetic_sets(0) == {rid.name: rid}
    assert ids.list_synthetic_sets(layout.results, 0) == {rid.name: rid}


def test_nnunet_identifier_build_and_parse_with_single_underscores(layout):
    name = ResultLayout.nnunet_identifier("NeoSegTrainer_SwinUNETR", "My_Plans_v2", "3d_fullres")
    assert name == "NeoSegTrainer_SwinUNETR__My_Plans_v2__3d_fullres"
    assert ResultLayout.parse_nnunet_identifier(name) == NnUNetModelId("NeoSegTrainer_SwinUNETR", "My_Plans_v2",
                                                                       "3d_fullres")
    assert NnUNetModelId("T", "My_Plans_v2").name == f"T__My_Plans_v2__{ids.SEG_CONFIGURATION}"
    for bad in ("T__P", "T__P__c__x", "__P__c", "T____c", "vae__NeoNetPlans"):
        assert ResultLayout.parse_nnunet_identifier(bad) is None
    mf = layout.nnunet_model_folder("NeoSegTrainer")
    assert mf == layout.nnunet_results / f"NeoSegTrainer__{PLANS_NAME}__3d_fullres"
    assert layout.nnunet_fold_folder("NeoSegTrainer", 4) == mf / "fold_4"
    assert layout.nnunet_fold_folder("NeoSegTrainer", "all") == mf / "fold_all"  # nnU-Net's fold "all"
    assert ResultLayout.parse_fold_folder_name("fold_all") is None
    assert layout.nnunet_plans_file == layout.preprocessed / f"{PLANS_NAME}.json"
    assert ResultLayout.nnunet_crossval_folder(mf, [0, 2]) == mf / "crossval_results_folds_0_2"
    assert ids.nnunet_model_folder(DS, "NeoSegTrainer") == mf
    mf.mkdir(parents=True)
    (layout.nnunet_results / "not_a_model").mkdir()
    assert layout.nnunet_model_folders() == [mf]


@pytest.mark.parametrize("kind, files", sorted(FINISHED_RULES.items()))
def test_each_kind_has_one_finished_rule_and_every_file_of_it_counts(tmp_path, kind, files):
    fold = tmp_path / "fold_0"
    fold.mkdir()
    assert not ResultLayout.is_finished(kind, fold)
    for i, f in enumerate(files):
        _touch(fold / f)
        assert ResultLayout.is_finished(kind, fold) == (i == len(files) - 1)
    assert ResultLayout.finished_folds(tmp_path, kind) == {0: fold}


def test_the_rules_name_the_expected_files():
    assert FINISHED_RULES == {"model": ("checkpoint_final.pth",),
                              "seg_validation": ("validation/summary.json",),
                              "cls_predictions": ("oof_predictions.csv", "cls_summary.json"),
                              "synthetic_set": ("manifest.json",)}
    with pytest.raises(ValueError, match="Unknown artefact kind"):
        ResultLayout.is_finished("done", "/nonexistent")


def test_cls_runs_by_model_rule_and_by_predictions_rule(layout):
    deep = ClsRunId("pattennet").name
    radiomics = "cls_radiomics_0"
    _touch(layout.checkpoint(deep, 0))
    for f in ("oof_predictions.csv", "cls_summary.json"):
        _touch(layout.fold_folder(radiomics, 1) / f)
    layout.fold_folder("cls_evaluation", 0).mkdir(parents=True)
    assert layout.cls_runs() == [deep]
    assert layout.cls_runs(kind="cls_predictions") == [radiomics]
    assert layout.cls_runs(finished_only=False) == sorted([deep, radiomics])
    assert ids.list_cls_runs(layout.results) == [deep]
    assert ids.fold_is_finished(layout.fold_folder(deep, 0))
    assert ids.finished_folds(layout.stage_root(deep)) == {0: layout.fold_folder(deep, 0)}


@pytest.mark.parametrize("part", ["../x", "a/b", "a__b", "", ".hidden", "a b"])
def test_unsafe_parts_are_refused(isolated_env, part):
    with pytest.raises(UnsafeNameError):
        ResultLayout.stage_folder_name(part)
    with pytest.raises(UnsafeNameError):
        ResultLayout.nnunet_identifier("NeoSegTrainer", part)
    with pytest.raises(UnsafeNameError):
        ResultLayout(DS, plans_name=part)


def test_unsafe_dataset_name_is_refused(isolated_env):
    with pytest.raises(UnsafeNameError, match="dataset name"):
        ResultLayout("../Dataset501_X")
