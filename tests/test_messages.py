"""Every message that suggests a command names the dataset (and fold) in use, never a hard-coded 501."""
from __future__ import annotations

import pytest

from neonet_toolkit import paths
from neonet_toolkit.experiment_planning.plans import NeoNetPlans
from neonet_toolkit.experiment_planning.splits import load_splits
from neonet_toolkit.preprocessing.synthetic_sets import load_manifest
from neonet_toolkit.models.seg import check_model_folder


def test_suggested_commands_name_the_dataset_in_use(tmp_path, monkeypatch):
    for k in paths.ENV_VARS:
        monkeypatch.setenv(k, str(tmp_path / k))
        (tmp_path / k).mkdir()
    pp = tmp_path / "nnUNet_preprocessed" / "Dataset612_Liver"
    pp.mkdir()
    with pytest.raises(FileNotFoundError, match=r"neonet_plan_and_preprocess -d Dataset612_Liver`"):
        load_splits(pp)
    with pytest.raises(FileNotFoundError, match=r"neonet_plan_and_preprocess -d Dataset612_Liver`"):
        NeoNetPlans(pp / "neonet_plans.json")
    syn = tmp_path / "neonet_results" / "Dataset612_Liver" / "synthetic__NeoNetPlans" / "fold_3"
    with pytest.raises(FileNotFoundError, match=r"neonet_generate -d Dataset612_Liver -f 3`"):
        load_manifest(syn)
    with pytest.raises(FileNotFoundError, match=r"neonet_make_demo_dataset -d 613`") as e:
        paths.find_dataset_name(613)
    assert "501" not in str(e.value)
    model = tmp_path / "nnUNet_results" / "Dataset612_Liver" / "NeoSegTrainer__NeoNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        (model / f).write_text("{}", encoding="utf-8")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"neonet_train Dataset612_Liver seg 2`"):
        check_model_folder(model, [2])


def test_monai_generative_next_to_monai_core_gives_a_clear_warning(monkeypatch, caplog, tmp_path):
    from importlib import metadata

    for k in (*paths.ENV_VARS, "nnUNet_extTrainer"):  # setup_logging gives a CLI process its defaults
        monkeypatch.setenv(k, str(tmp_path / k))

    from neonet_toolkit.run.common import setup_logging
    from neonet_toolkit.utilities import package_checks

    real = metadata.version
    monkeypatch.setattr(package_checks.metadata, "version",
                        lambda name: "0.2.3" if name == "monai-generative" else real(name))
    msg = package_checks.monai_generative_warning()
    assert "monai-generative 0.2.3" in msg and "pip uninstall monai-generative" in msg and "MONAI core" in msg
    with caplog.at_level("WARNING"):
        setup_logging()
    assert "monai-generative 0.2.3 is installed" in caplog.text
    monkeypatch.setattr(package_checks.metadata, "version", real)
    assert package_checks.monai_generative_warning() is None  # not installed here
