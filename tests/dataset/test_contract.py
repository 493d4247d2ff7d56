"""Every bad input gets its own clear error (naming the case and the fix)."""
import json
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from neonet_toolkit.dataset.case_ids import check_case_id, safe_join
from neonet_toolkit.dataset.contract import NeoNetDataset, load_dataset_json, read_case_labels
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import resolve_label_roles
from neonet_toolkit.dataset.verification import verify_dataset
from neonet_toolkit.demo.phantom import make_phantom_dataset


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    return make_phantom_dataset(root, 777, "Tiny", n_train=10, n_test=0, shape_xyz=(20, 20, 10),
                                spacing=(2.0, 2.0, 4.0), shape_jitter=1, seed=3)


@pytest.fixture
def ds_folder(template, tmp_path):
    dst = tmp_path / template.name
    shutil.copytree(template, dst)
    return dst


def _csv(folder, rows, header="case_id,PNI"):
    (folder / "case_labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


def _rows(folder):
    return (folder / "case_labels.csv").read_text(encoding="utf-8").strip().splitlines()[1:]


def test_valid_dataset_loads(ds_folder):
    ds = NeoNetDataset.load(ds_folder)
    assert len(ds.case_ids) == 10
    assert ds.roles.organ_ids == (1,) and ds.roles.tumor_ids == (2,)
    report = verify_dataset(ds, full=True)
    assert report["n_cases"] == 10 and report["empty_tumor_cases"] == []


def test_missing_case_label(ds_folder):
    rows = _rows(ds_folder)
    _csv(ds_folder, rows[1:])
    missing = rows[0].split(",")[0]
    with pytest.raises(DatasetError, match=f"case '{missing}' is in imagesTr but has no row"):
        NeoNetDataset.load(ds_folder)


def test_extra_case_label(ds_folder):
    _csv(ds_folder, _rows(ds_folder) + ["ghost_case,1"])
    with pytest.raises(DatasetError, match="'ghost_case' is in case_labels.csv but has no image"):
        NeoNetDataset.load(ds_folder)


def test_duplicate_case_label(ds_folder):
    rows = _rows(ds_folder)
    _csv(ds_folder, rows + [rows[2]])
    with pytest.raises(DatasetError, match="listed twice"):
        NeoNetDataset.load(ds_folder)


@pytest.mark.parametrize("value", ["2", "yes", "0.5", ""])
def test_non_binary_target(ds_folder, value):
    rows = _rows(ds_folder)
    cid = rows[0].split(",")[0]
    _csv(ds_folder, [f"{cid},{value}"] + rows[1:])
    with pytest.raises(DatasetError, match=f"case '{cid}' has PNI=.*must be 0 or 1"):
        NeoNetDataset.load(ds_folder)


def test_wrong_header(ds_folder):
    _csv(ds_folder, _rows(ds_folder), header="id,label")
    with pytest.raises(DatasetError, match="expected 'case_id,PNI'"):
        NeoNetDataset.load(ds_folder)


def test_missing_csv(ds_folder):
    (ds_folder / "case_labels.csv").unlink()
    with pytest.raises(DatasetError, match="Missing case-label file"):
        NeoNetDataset.load(ds_folder)


def test_single_class_dataset(ds_folder):
    _csv(ds_folder, [r.split(",")[0] + ",0" for r in _rows(ds_folder)])
    with pytest.raises(DatasetError, match="needs both classes"):
        NeoNetDataset.load(ds_folder)


def test_unknown_label_names(ds_folder):
    dj = json.loads((ds_folder / "dataset.json").read_text(encoding="utf-8"))
    dj["neonet"]["tumor_labels"] = ["lesion"]
    (ds_folder / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    with pytest.raises(DatasetError, match="'lesion'.*not in dataset.json 'labels'"):
        NeoNetDataset.load(ds_folder)
    dj["neonet"].pop("tumor_labels")
    dj["labels"] = {"background": 0, "hepar": 1, "tumor": 2}
    (ds_folder / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    with pytest.raises(DatasetError, match="'liver'"):
        NeoNetDataset.load(ds_folder)


def test_label_roles_by_name_with_other_ids_and_synonyms():
    roles = resolve_label_roles({"labels": {"background": 0, "vessel": 1, "Tumour": 5, "Liver": 7}})
    assert roles.organ_ids == (7,) and roles.tumor_ids == (5,)
    roles = resolve_label_roles({"labels": {"background": 0, "liver": 1, "lesion": 2, "cyst": 3},
                                 "neonet": {"tumor_labels": ["lesion", "cyst"]}})
    assert roles.tumor_ids == (2, 3)


@pytest.mark.parametrize("bad", ["../escape", "a/b", "/abs", ".hidden", "x..y", "a\\b", ""])
def test_case_id_escaping_dataset_folder(bad, tmp_path):
    with pytest.raises(DatasetError, match="not a safe file name"):
        check_case_id(bad)
    with pytest.raises(DatasetError):
        safe_join(tmp_path, bad, ".npz")


def test_escaping_case_id_in_csv(ds_folder):
    _csv(ds_folder, _rows(ds_folder) + ["../../etc/passwd,1"])
    with pytest.raises(DatasetError, match="not a safe file name"):
        read_case_labels(ds_folder / "case_labels.csv", "PNI")


def _first_case(folder):
    return sorted(p.name[:-len("_0000.nii.gz")] for p in (folder / "imagesTr").glob("*_0000.nii.gz"))[0]


def test_shape_mismatch(ds_folder):
    cid = _first_case(ds_folder)
    lab = sitk.ReadImage(str(ds_folder / "labelsTr" / f"{cid}.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)[:-1]
    new = sitk.GetImageFromArray(arr)
    new.SetSpacing(lab.GetSpacing())
    sitk.WriteImage(new, str(ds_folder / "labelsTr" / f"{cid}.nii.gz"))
    ds = NeoNetDataset.load(ds_folder)
    with pytest.raises(DatasetError, match=f"case '{cid}': image .* has size .* but label has"):
        verify_dataset(ds, full=False)


def test_affine_mismatch(ds_folder):
    cid = _first_case(ds_folder)
    f = ds_folder / "labelsTr" / f"{cid}.nii.gz"
    lab = sitk.ReadImage(str(f))
    lab.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(lab, str(f))
    ds = NeoNetDataset.load(ds_folder)
    with pytest.raises(DatasetError, match=f"case '{cid}'.*affine mismatch"):
        verify_dataset(ds, full=False)


def test_nan_and_inf_voxels(ds_folder):
    cid = _first_case(ds_folder)
    f = ds_folder / "imagesTr" / f"{cid}_0000.nii.gz"
    img = sitk.ReadImage(str(f))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = np.nan
    arr[0, 0, 1] = np.inf
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(img)
    sitk.WriteImage(new, str(f))
    ds = NeoNetDataset.load(ds_folder)
    with pytest.raises(DatasetError, match=f"case '{cid}'.*2 NaN/Inf voxel"):
        verify_dataset(ds, full=True)


def test_undeclared_label_value(ds_folder):
    cid = _first_case(ds_folder)
    f = ds_folder / "labelsTr" / f"{cid}.nii.gz"
    lab = sitk.ReadImage(str(f))
    arr = sitk.GetArrayFromImage(lab)
    arr[0, 0, 0] = 9
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(lab)
    sitk.WriteImage(new, str(f))
    with pytest.raises(DatasetError, match=r"value\(s\) \[9\] not declared"):
        verify_dataset(NeoNetDataset.load(ds_folder), full=True)


def test_empty_tumor_is_a_listed_warning(ds_folder, caplog):
    cid = _first_case(ds_folder)
    f = ds_folder / "labelsTr" / f"{cid}.nii.gz"
    lab = sitk.ReadImage(str(f))
    arr = sitk.GetArrayFromImage(lab)
    arr[arr == 2] = 1
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(lab)
    sitk.WriteImage(new, str(f))
    with caplog.at_level(logging.WARNING):
        report = verify_dataset(NeoNetDataset.load(ds_folder), full=True)
    assert report["empty_tumor_cases"] == [cid]
    assert f"case '{cid}': empty tumour" in caplog.text


def test_missing_label_file_and_channel(ds_folder):
    cid = _first_case(ds_folder)
    (ds_folder / "labelsTr" / f"{cid}.nii.gz").unlink()
    with pytest.raises(DatasetError, match=f"case '{cid}': label .* is missing"):
        NeoNetDataset.load(ds_folder)


def test_phantom_refuses_to_overwrite(template):
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_phantom_dataset(template.parent, 777, "Other")


# --- issue 21 item 10: CSV and dataset.json problems are named errors, never tracebacks -------------------

def test_trailing_comma_on_the_rows_is_a_named_error(ds_folder):
    rows = _rows(ds_folder)
    (ds_folder / "case_labels.csv").write_text("case_id,PNI\n" + "\n".join(r + "," for r in rows) + "\n",
                                               encoding="utf-8")  # an AttributeError before
    with pytest.raises(DatasetError) as err:
        NeoNetDataset.load(ds_folder)
    msg = str(err.value)
    assert "case_labels.csv: 10 line(s) have more fields than the header ['case_id', 'PNI']" in msg
    assert "line(s) [2, 3, 4" in msg and "a trailing comma?" in msg and "Remove the trailing comma(s)" in msg


def test_trailing_comma_on_every_line_including_the_header_is_accepted(ds_folder):
    rows = _rows(ds_folder)
    (ds_folder / "case_labels.csv").write_text("case_id,PNI,\n" + "\n".join(r + "," for r in rows) + "\n",
                                               encoding="utf-8")
    assert len(NeoNetDataset.load(ds_folder).case_labels) == 10


def test_latin1_csv_is_a_named_error(ds_folder):
    rows = _rows(ds_folder)
    (ds_folder / "case_labels.csv").write_bytes(
        ("case_id,PNI,remark\n" + "\n".join(r + "," for r in rows[:3]) + f"\n{rows[3]},Müller\n").encode("latin-1"))
    with pytest.raises(DatasetError, match=r"case_labels.csv is not UTF-8 text \(byte 0xfc on line 5; Latin-1.*"
                                           r"Save it as UTF-8"):
        NeoNetDataset.load(ds_folder)


def test_semicolon_separated_csv_gets_a_hint(ds_folder):
    _csv(ds_folder, [r.replace(",", ";") for r in _rows(ds_folder)], header="case_id;PNI")
    with pytest.raises(DatasetError, match="seems to use ';' as separator"):
        NeoNetDataset.load(ds_folder)


@pytest.mark.parametrize("key", ["labels", "channel_names", "numTraining", "file_ending"])
def test_dataset_json_without_a_required_key_names_the_file_and_the_fix(ds_folder, key):
    f = ds_folder / "dataset.json"
    dj = json.loads(f.read_text(encoding="utf-8"))
    dj.pop(key)
    f.write_text(json.dumps(dj), encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        NeoNetDataset.load(ds_folder)
    msg = str(err.value)
    assert msg.startswith(f"{f} lacks the required nnU-Net key(s) ['{key}']; add \"{key}\": ")


@pytest.mark.parametrize("edit, match", [
    ({"labels": {"liver": 1, "tumor": 2}}, r"'labels' must declare \"background\": 0"),
    ({"labels": []}, r"'labels' must be an object of label names to ids"),
    ({"channel_names": {}}, r"'channel_names' must be a non-empty object"),
    ({"numTraining": "10"}, r"'numTraining' must be a positive integer"),
    ({"numTraining": 12}, r"numTraining is 12 but imagesTr holds 10 case\(s\); set \"numTraining\": 10"),
    ({"file_ending": "nii.gz"}, r"'file_ending' must be a string like"),
])
def test_dataset_json_with_unusable_values(ds_folder, edit, match):
    f = ds_folder / "dataset.json"
    dj = json.loads(f.read_text(encoding="utf-8"))
    dj.update(edit)
    f.write_text(json.dumps(dj), encoding="utf-8")
    with pytest.raises(DatasetError, match=match):
        NeoNetDataset.load(ds_folder)


def test_dataset_json_that_is_not_json(ds_folder, tmp_path):
    f = ds_folder / "dataset.json"
    f.write_text(f.read_text(encoding="utf-8").replace(",", "", 1), encoding="utf-8")
    with pytest.raises(DatasetError,
                       match=r"dataset.json is not valid JSON \(Expecting ',' delimiter at line \d+, column \d+\)"):
        NeoNetDataset.load(ds_folder)
    with pytest.raises(DatasetError, match=r"does not exist"):
        load_dataset_json(tmp_path / "nowhere" / "dataset.json")
