"""nnU-Net properties pickles: listed without running them, refused unless they reference only the globals
nnU-Net writes there; real files pass and load exactly as ``pickle.load`` reads them."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import time

import numpy as np
import pytest

from neonet_toolkit.utilities.safe_pickle import (
    NNUNET_PROPERTIES_GLOBALS,
    RestrictedUnpickler,
    UnsafePickleError,
    load_pickle,
    pickle_globals,
    unsafe_globals,
    verify_preprocessed_folder,
)

DATA = "NeoNetPlans_3d_fullres"


class Payload:
    """What an attacker adds to a properties file: unpickling it runs a shell command (here: creates a marker)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_data_folder(planned_phantom, tmp_path):
    """A copy of the phantom's nnU-Net data folder inside a ``Dataset501_*`` folder (the fixture stays untouched)."""
    root = tmp_path / planned_phantom["dataset_name"]
    shutil.copytree(planned_phantom["preprocessed"] / DATA, root / DATA)
    return root


def test_real_nnunet_properties_pass_and_load_like_pickle(planned_phantom):
    pp = planned_phantom["preprocessed"]
    files = sorted((pp / DATA).glob("*.pkl"))
    assert len(files) == 20
    t = time.perf_counter()
    assert verify_preprocessed_folder(pp) == 20
    per_file = (time.perf_counter() - t) / len(files)
    assert per_file < 0.05, f"verification must stay cheap: {per_file * 1e3:.2f} ms per file"
    seen = set()
    for f in files:
        found = pickle_globals(f.read_bytes())
        assert found and found <= NNUNET_PROPERTIES_GLOBALS
        seen |= found
        with open(f, "rb") as fh:
            plain = pickle.load(fh)
        safe = load_pickle(f)
        assert repr(safe) == repr(plain)
        assert set(safe["class_locations"]) == {1, 2}
        assert isinstance(safe["class_locations"][2], np.ndarray)
    # the allow-list is what these files need: arrays (ndarray/_reconstruct/dtype) and numpy float scalars
    assert {"numpy.ndarray", "numpy.dtype"} <= seen


def test_protocol5_properties_are_allowed(planned_phantom):
    """pickle's default protocol is 5 from Python 3.14 on; numpy then writes arrays through _frombuffer."""
    f = sorted((planned_phantom["preprocessed"] / DATA).glob("*.pkl"))[0]
    props = load_pickle(f)
    data = pickle.dumps(props, protocol=5)
    assert "numpy._core.numeric._frombuffer" in pickle_globals(data)
    assert repr(RestrictedUnpickler(io.BytesIO(data)).load()) == repr(props)


def test_numpy1_module_names_are_allowed():
    """A folder preprocessed under numpy < 2 names numpy._core's functions numpy.core (protocol 3: GLOBAL)."""
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    data = pickle.dumps({"a": arr, "s": np.float64(1.5)}, protocol=3)
    assert b"numpy._core.multiarray" in data
    legacy = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"} <= pickle_globals(legacy)
    out = RestrictedUnpickler(io.BytesIO(legacy)).load()
    np.testing.assert_array_equal(out["a"], arr)
    assert out["s"] == 1.5


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_payload_is_refused_without_running(planned_phantom, tmp_path, protocol):
    marker = tmp_path / "MARKER"
    f = sorted((planned_phantom["preprocessed"] / DATA).glob("*.pkl"))[3]
    props = load_pickle(f)
    props["extra"] = Payload(marker)
    data = pickle.dumps(props, protocol=protocol)
    assert "posix.system" in pickle_globals(data) or "nt.system" in pickle_globals(data)
    # the restricted loader stops at the first global off the allow-list (protocols < 3 reach _codecs first)
    with pytest.raises(UnsafePickleError, match=r"x\.pkl references .* not on the allow-list"):
        RestrictedUnpickler(io.BytesIO(data), where="x.pkl").load()
    evil = tmp_path / "case.pkl"
    evil.write_bytes(data)
    assert any(g.endswith(".system") for g in unsafe_globals(evil))
    with pytest.raises(UnsafePickleError, match=r"case\.pkl references .* not on the allow-list"):
        load_pickle(evil)
    assert not marker.exists()


def test_preprocessed_folder_with_planted_payload_is_named_with_the_fix(planned_phantom, tmp_path):
    root = _copy_data_folder(planned_phantom, tmp_path)
    marker = tmp_path / "MARKER"
    victim = sorted((root / DATA).glob("*.pkl"))[5]
    props = load_pickle(victim)
    props["sitk_stuff"]["note"] = Payload(marker)
    with open(victim, "wb") as fh:
        pickle.dump(props, fh)
    for folder in (root, root / DATA):  # the dataset folder or its data folder
        with pytest.raises(UnsafePickleError) as e:
            verify_preprocessed_folder(folder)
        msg = str(e.value)
        assert str(victim) in msg and "system" in msg and "1 of 20" in msg
        assert f"delete {root / DATA}" in msg and "neonet_plan_and_preprocess -d Dataset501_NeoNetPhantom`" in msg
    assert not marker.exists()


def test_unreadable_and_unlistable_pickles_are_refused(tmp_path):
    good = pickle.dumps({"spacing": [np.float64(1.0)]}, protocol=4)
    assert pickle_globals(good) <= NNUNET_PROPERTIES_GLOBALS
    with pytest.raises(UnsafePickleError, match="not a readable pickle"):
        pickle_globals(good[: len(good) // 2])  # truncated
    with pytest.raises(UnsafePickleError, match="not a readable pickle"):
        pickle_globals(b"not a pickle at all")
    # os.system pushed as two strings, then something pushed and popped before STACK_GLOBAL: pickle would still
    # resolve os.system, but the global cannot be read off the opcodes -> refused (fail closed)
    hidden = b"\x80\x04\x8c\x02os\x8c\x06system)0\x93\x8c\x04true\x85R."
    with pytest.raises(UnsafePickleError, match="cannot be checked"):
        pickle_globals(hidden)
    # copyreg extension codes and persistent ids resolve objects outside the stream
    with pytest.raises(UnsafePickleError, match="extension"):
        pickle_globals(b"\x80\x02\x82\x01.")
    with pytest.raises(UnsafePickleError, match="persistent id"):
        pickle_globals(b"\x80\x02\x8c\x01xQ.")
    # a memoised module name (how protocol 4 repeats "numpy") is resolved, not refused
    data = pickle.dumps([np.float64(1.0), np.float32(2.0), np.arange(3)], protocol=4)
    assert pickle_globals(data) <= NNUNET_PROPERTIES_GLOBALS
    f = tmp_path / "Dataset777_X" / "data" / "c.pkl"
    f.parent.mkdir(parents=True)
    f.write_bytes(good[:10])
    with pytest.raises(UnsafePickleError, match=r"(?s)c\.pkl: it is not a readable pickle.*-d Dataset777_X`"):
        verify_preprocessed_folder(tmp_path / "Dataset777_X")
