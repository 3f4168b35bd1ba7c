"""The restricted unpickler: plain data and numpy arrays load; anything that could run code does not."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.safe_pickle import get_key, load_pickle


class _RunsACommand:
    """Unpickling this with plain pickle would run ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_whose_payload_runs_a_command_is_refused_and_the_command_does_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"data": _RunsACommand(marker)}))
    with pytest.raises(FsmtlError, match="evil.pkl") as e:
        load_pickle(path, "a dict")
    assert "system" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_scalars_and_containers_load_under_every_protocol(tmp_path, protocol):
    obj = {
        "x": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "f": np.float32(1.5),
        "d": np.dtype("int64"),
        b"bytes_key": [1, 2.5, "s", b"b", (True, None)],
        "set": {1, 2},
        "nc": np.arange(6, dtype=np.int64).reshape(2, 3).T,  # non-contiguous
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = load_pickle(path, "a dict")
    np.testing.assert_array_equal(got["x"], obj["x"])
    np.testing.assert_array_equal(got["nc"], obj["nc"])
    assert got["f"] == np.float32(1.5) and got["d"] == np.dtype("int64")
    assert got[b"bytes_key"] == [1, 2.5, "s", b"b", (True, None)] and got["set"] == {1, 2}


def test_python2_era_pickle_with_str_data_rebuilds_the_array(tmp_path):
    # what Python 2's cPickle writes for {'data': np.array([1, 2, 3], uint8)} (protocol 2):
    # py2 str keys and array bytes (SHORT_BINSTRING), numpy.core.multiarray._reconstruct
    py2 = (
        b"\x80\x02}q\x00U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\n"
        b"K\x00\x85U\x01b\x87Rq\x03(K\x01K\x03\x85cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03\x01\x02\xfftbs."
    )
    path = tmp_path / "py2.pkl"
    path.write_bytes(py2)
    got = load_pickle(path, "a dict")
    data = get_key(got, "data", str(path), "a batch")
    assert data.dtype == np.uint8 and data.tolist() == [1, 2, 255]


def test_get_key_accepts_bytes_keys_and_names_the_file_when_missing():
    assert get_key({b"data": 1}, "data", "f.pkl", "a batch") == 1
    with pytest.raises(FsmtlError, match=r"f.pkl: expected a batch with key 'labels'"):
        get_key({b"data": 1}, "labels", "f.pkl", "a batch")


def test_truncated_and_missing_pickles_name_the_file(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"x": np.zeros(1000, np.uint8)})[:200])
    with pytest.raises(FsmtlError, match="cut.pkl: truncated"):
        load_pickle(path, "a dict")
    with pytest.raises(FsmtlError, match="nope.pkl: file not found"):
        load_pickle(tmp_path / "nope.pkl", "a dict")


def test_codecs_encode_is_limited_to_text_encodings(tmp_path):
    # protocol 2 writes bytes as _codecs.encode(str, 'latin1'); other codecs are refused
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R."
    path = tmp_path / "codec.pkl"
    path.write_bytes(payload)
    with pytest.raises(FsmtlError, match="codec.pkl"):
        load_pickle(path, "bytes")


def test_a_pickle_of_nested_lists_past_the_object_cap_is_refused_early(tmp_path):
    # images as nested Python lists (not an array) would grow to gigabytes before any check
    path = tmp_path / "nested.pkl"
    path.write_bytes(pickle.dumps({"image_data": [[[0] * 50 for _ in range(40)] for _ in range(30)]}))
    from fsmtl.preprocess.safe_pickle import RestrictedUnpickler

    with open(path, "rb") as f:
        with pytest.raises(pickle.UnpicklingError, match="more than 10,000 objects"):
            RestrictedUnpickler(f, max_objects=10_000).load()
    with open(path, "rb") as f:
        assert len(RestrictedUnpickler(f, max_objects=100_000).load()["image_data"]) == 30
    with pytest.raises(FsmtlError, match=r"nested.pkl: refused: the pickle builds more than 10,000 objects .*expected a cache"):
        load_pickle(path, "a cache", max_objects=10_000)


def test_a_bytearray_of_a_huge_size_is_refused_without_allocating(tmp_path):
    # bytearray(10**12) from a pickle of a few dozen bytes would allocate a terabyte
    payload = b"\x80\x02c__builtin__\nbytearray\nJ\x00\x10\xa5\xd4\x85R."  # bytearray(0xd4a51000)
    path = tmp_path / "bomb.pkl"
    path.write_bytes(payload)
    with pytest.raises(FsmtlError, match="bomb.pkl: not a safe data pickle .*refusing bytearray\\(int\\)"):
        load_pickle(path, "a dict")
    assert load_pickle_bytes_roundtrip(tmp_path) == bytearray(b"ok")


def load_pickle_bytes_roundtrip(tmp_path):
    path = tmp_path / "ba.pkl"
    path.write_bytes(pickle.dumps(bytearray(b"ok"), protocol=2))
    return load_pickle(path, "bytes")
