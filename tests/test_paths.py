"""paths.find_dataset_name: one name per dataset id (issue 21 item 10: two Dataset501_* folders)."""
import pytest

from neonet_toolkit import paths


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for k in paths.ENV_VARS:
        monkeypatch.setenv(k, str(tmp_path / k))
        (tmp_path / k).mkdir()
    return tmp_path


def test_one_name_per_id_resolves(roots):
    (roots / "nnUNet_raw" / "Dataset501_Liver").mkdir()
    (roots / "nnUNet_preprocessed" / "Dataset501_Liver").mkdir()
    assert paths.find_dataset_name(501) == paths.find_dataset_name("501") == "Dataset501_Liver"
    assert paths.find_dataset_name("Dataset501_Liver") == "Dataset501_Liver"


@pytest.mark.parametrize("other_root", ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results"])
def test_two_names_for_one_id_are_a_named_error(roots, other_root):
    # a RuntimeError traceback before; by full name nnU-Net's own id lookup raised later
    (roots / "nnUNet_raw" / "Dataset501_Liver").mkdir()
    (roots / other_root / "Dataset501_Old").mkdir()
    for requested in (501, "Dataset501_Liver"):
        with pytest.raises(paths.AmbiguousDatasetError) as err:
            paths.find_dataset_name(requested)
        msg = str(err.value)
        assert msg.startswith("Dataset id 501 is ambiguous: 2 dataset names use it (")
        assert f"Dataset501_Old in {other_root} ({roots / other_root / 'Dataset501_Old'})" in msg
        assert f"Dataset501_Liver in nnUNet_raw ({roots / 'nnUNet_raw' / 'Dataset501_Liver'})" in msg
        assert "rename or move away the folder(s) of the other name(s)" in msg
    assert isinstance(err.value, ValueError)  # the console entry points print it as "error: ..." (exit 2)
