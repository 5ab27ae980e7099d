"""Issue 15: model files must not run code. Classifier bundles are JSON + .npy in a zip
(:mod:`aqqua_geo.downstream.bundle_io`); pickles and unknown types are refused unread."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from aqqua_geo.downstream import bundle_io
from aqqua_geo.downstream.classify import ClassifierBundle
from aqqua_geo.downstream.novelty import METHODS, NoveltyScorer
from aqqua_geo.downstream.probes import KNNClassifier, LinearProbe


def _data(seed=0, n=30, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    y = np.repeat(np.array(["Copepoda", "detritus", "Oithona"]), n)
    x = centres[np.repeat(np.arange(3), n)] + 0.3 * rng.normal(size=(3 * n, dim))
    return x.astype(np.float32), y


class _Marker:
    """A pickle payload that leaves a file behind if it is ever unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("head_cls", [KNNClassifier, LinearProbe])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "energy"] + ["energy"])
def test_bundle_round_trip_without_pickle(tmp_path, head_cls, method):
    x, y = _data()
    head = head_cls().fit(x, y)
    novelty = NoveltyScorer(method).fit(x, y) if method != "energy" else NoveltyScorer("energy")
    bundle = ClassifierBundle(head=head, temperature=1.7, embedding={"embed_dim": 8, "backbone_sha256": "ab"},
                              label_map={"Oithona": "Copepoda", "x": None},
                              novelty=novelty, metrics={"n_train": np.int64(90), "ece": np.float32(0.1),
                                                        "table": [{"t": 1.0, "nan": float("nan")}], "pair": (1, "a")})
    path = bundle.save(tmp_path / "classifier.joblib")
    with zipfile.ZipFile(path) as z:
        assert set(n.split("/")[0] for n in z.namelist()) <= {"bundle.json", "arrays"}
    back = ClassifierBundle.load(path)
    assert type(back.head) is head_cls and back.temperature == 1.7 and back.label_map == bundle.label_map
    np.testing.assert_allclose(back.predict_proba(x), bundle.predict_proba(x))
    assert back.metrics["n_train"] == 90 and back.metrics["pair"] == (1, "a") and np.isnan(back.metrics["table"][0]["nan"])
    if method != "energy":
        np.testing.assert_allclose(back.novelty.score(x), novelty.score(x))


def test_pickle_classifier_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.joblib"
    evil.write_bytes(pickle.dumps({"format": "aqqua-classifier", "head": _Marker(marker)}))
    with pytest.raises(bundle_io.UnsafeBundleError, match="pickle/joblib file.*NOT loaded"):
        ClassifierBundle.load(evil)
    assert not marker.exists()  # was: the file's code ran before the format check
    import joblib

    joblib.dump({"x": _Marker(marker)}, tmp_path / "evil2.joblib", compress=3)
    with pytest.raises(bundle_io.UnsafeBundleError):
        ClassifierBundle.load(tmp_path / "evil2.joblib")
    assert not marker.exists()


def _zip(path, doc, arrays=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bundle.json", json.dumps(doc))
        for i, a in enumerate(arrays):
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=True)
            z.writestr(f"arrays/{i}.npy", buf.getvalue())


def test_unknown_types_and_object_arrays_are_refused(tmp_path):
    doc = {"container": "aqqua-bundle", "container_version": 1,
           "payload": {"format": "aqqua-classifier", "head": {"__object__": "os.system", "state": {}}}}
    _zip(tmp_path / "a.zip", doc)
    with pytest.raises(bundle_io.UnsafeBundleError, match="type 'os.system' is not one a classifier bundle may contain"):
        ClassifierBundle.load(tmp_path / "a.zip")
    doc["payload"]["head"] = {"__ndarray__": 0}
    _zip(tmp_path / "b.zip", doc, [np.array([_Marker(tmp_path / "PWNED")], dtype=object)])
    with pytest.raises(bundle_io.UnsafeBundleError, match="not a plain numpy array"):
        ClassifierBundle.load(tmp_path / "b.zip")
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(TypeError, match="cannot be saved in a classifier bundle"):
        bundle_io.save_bundle(tmp_path / "c.zip", {"head": os})
    assert not (tmp_path / "c.zip").exists()


def test_trusted_types_are_one_constant():
    assert bundle_io.TRUSTED_TYPES == {
        "aqqua_geo.downstream.probes.KNNClassifier", "aqqua_geo.downstream.probes.LinearProbe",
        "aqqua_geo.downstream.novelty.NoveltyScorer"}
