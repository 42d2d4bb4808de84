"""Optional weight-folder backends (face-alignment S3FD/FAN, facexlib RetinaFace/BiSeNet).

The real weights are never downloaded: random-init networks are saved under the real file
names and in the real formats (plain state dicts; RetinaFace's with DataParallel `module.`
prefixes), so the real loading code runs. Outputs are garbage; only types/shapes are checked.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("face_alignment")
pytest.importorskip("facexlib")

from ifmdm_data.faces.backends import SCHEMES, build_models  # noqa: E402
from ifmdm_data.faces.backends.facexlib_backend import (BISENET_FILE, RETINAFACE_FILE,  # noqa: E402
                                                  BiSeNetSegmenter, RetinaFaceDetector)
from ifmdm_data.faces.backends.fan_backend import (FAN2D_FILE, S3FD_FILE, FANLandmarks,  # noqa: E402
                                             S3FDDetector, heatmap_points)
from ifmdm_data.faces.backends.weights import WeightsLoadError  # noqa: E402
from ifmdm_data.errors import ConfigError, IfmdmError, MissingWeightsError  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media" / "image" / "woman_portrait.jpg"


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch, tmp_path):
    """Any attempt to fetch weights fails the test loudly."""
    def boom(*a, **k):
        raise AssertionError(f"a backend tried to download weights: {a} {k}")
    import face_alignment.utils
    import facexlib.utils.misc
    import torch.hub
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", boom)
    monkeypatch.setattr(facexlib.utils.misc, "download_url_to_file", boom)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module", autouse=True)
def _flush_denormals():
    """Random-init FAN makes denormal floats on padded crops: up to 20x slower on CPU."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    """A folder with random-init weights under the real file names, in the real formats."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.bisenet import BiSeNet
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(s3fd().state_dict(), d / S3FD_FILE)
    torch.save(FAN(4).state_dict(), d / FAN2D_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        retina = RetinaFace(network_name="resnet50", device="cpu")
    torch.save({"module." + k: v for k, v in retina.state_dict().items()}, d / RETINAFACE_FILE)
    torch.save(BiSeNet(num_class=19).state_dict(), d / BISENET_FILE)
    return str(d)


@pytest.fixture(scope="session")
def rgb() -> np.ndarray:
    """A real portrait at 128x128 (random-init S3FD is slow on big frames)."""
    import cv2
    if MEDIA.is_file():
        img = cv2.cvtColor(cv2.imread(str(MEDIA)), cv2.COLOR_BGR2RGB)
    else:
        from skimage import data
        img = data.astronaut()
    return cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)


def _check_boxes(boxes, threshold):
    assert isinstance(boxes, np.ndarray) and boxes.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 5
    assert np.all(boxes[:, 4] > threshold)


@pytest.mark.parametrize("cls", [S3FDDetector, RetinaFaceDetector])
def test_detectors(weights, rgb, cls):
    det = cls(weights, device="cpu", threshold=0.5)
    _check_boxes(det.detect(rgb), 0.5)
    det.close()


class _FixedDetector:
    def detect(self, rgb):
        return np.array([[20, 15, 100, 115, 0.9], [0, 0, 10, 10, 0.8]], np.float32)

    def close(self):
        pass


def test_fan_landmarks(weights, rgb):
    fan = FANLandmarks(weights, device="cpu")
    assert fan.scheme is SCHEMES["ibug68"] and fan.scheme.n_points == 68
    fan.reset()
    pts = fan.landmarks(rgb)
    assert pts is None or (pts.shape == (68, 3) and pts.dtype == np.float32)
    fan.close()
    # the largest box of a shared detector is used; output is (68, 3) float32 with z = 0
    fan = FANLandmarks(weights, detector=_FixedDetector())
    pts = fan.landmarks(rgb)
    assert pts.shape == (68, 3) and pts.dtype == np.float32
    assert np.all(np.isfinite(pts)) and np.all(pts[:, 2] == 0)
    fan.close()


def test_heatmap_points_decoding():
    hm = np.zeros((2, 64, 64), np.float32)
    hm[0, 20, 10], hm[0, 20, 11], hm[0, 21, 10] = 1.0, 0.5, 0.2   # right and down are higher
    hm[1, 0, 0] = 1.0                                             # border: no quarter shift
    # scale 0.32 -> a 64-pixel crop, so heatmap pixels are frame pixels around `center`
    pts = heatmap_points(hm, np.array([100.0, 50.0]), 0.32)
    np.testing.assert_allclose(pts[0], [10.75 + 68, 20.75 + 18], atol=1e-5)
    np.testing.assert_allclose(pts[1], [0.5 + 68, 0.5 + 18], atol=1e-5)


def test_bisenet_person_mask(weights, rgb):
    seg = BiSeNetSegmenter(weights, device="cpu")
    frame = np.ascontiguousarray(rgb[:, :96])
    mask = seg.person_mask(frame)
    assert mask.shape == (128, 96) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    seg.close()


_CASES = [(S3FDDetector, S3FD_FILE), (FANLandmarks, FAN2D_FILE),
          (RetinaFaceDetector, RETINAFACE_FILE), (BiSeNetSegmenter, BISENET_FILE)]


@pytest.mark.parametrize("cls,filename", _CASES)
def test_missing_file_names_file_and_folder(tmp_path, weights, cls, filename):
    if cls is FANLandmarks:  # the detector file is there, the FAN file is not
        os.symlink(os.path.join(weights, S3FD_FILE), tmp_path / S3FD_FILE)
    with pytest.raises(MissingWeightsError) as ei:
        cls(str(tmp_path))
    msg = str(ei.value)
    assert filename in msg and str(tmp_path) in msg
    assert ei.value.filename == filename
    with pytest.raises(MissingWeightsError):
        cls(None)


def test_fan_needs_the_detector_file(tmp_path, weights):
    os.symlink(os.path.join(weights, FAN2D_FILE), tmp_path / FAN2D_FILE)
    with pytest.raises(MissingWeightsError, match=S3FD_FILE):
        FANLandmarks(str(tmp_path))


@pytest.mark.parametrize("cls,filename", _CASES)
def test_garbage_file_is_a_clear_error(tmp_path, weights, cls, filename):
    if cls is FANLandmarks:
        os.symlink(os.path.join(weights, S3FD_FILE), tmp_path / S3FD_FILE)
    (tmp_path / filename).write_bytes(b"<html>404 Not Found</html>" * 10)
    with pytest.raises(WeightsLoadError) as ei:
        cls(str(tmp_path))
    assert isinstance(ei.value, IfmdmError)
    assert filename in str(ei.value)


@pytest.mark.parametrize("cls,filename,other", [(S3FDDetector, S3FD_FILE, BISENET_FILE),
                                                (BiSeNetSegmenter, BISENET_FILE, S3FD_FILE)])
def test_wrong_architecture_is_a_clear_error(tmp_path, weights, cls, filename, other):
    shutil.copy(os.path.join(weights, other), tmp_path / filename)
    with pytest.raises(WeightsLoadError, match=filename):
        cls(str(tmp_path))


def test_build_models_fan(weights, rgb):
    models = build_models("fan", weights_dir=weights)
    try:
        assert models.names == {"detector": "s3fd", "landmarks": "fan", "segmenter": "mediapipe"}
        assert isinstance(models.detector, S3FDDetector)
        assert isinstance(models.landmarks, FANLandmarks)
        assert models.landmarks.scheme.name == "ibug68"
        _check_boxes(models.detector.detect(rgb), 0.5)
    finally:
        models.close()


def test_build_models_facexlib(weights, rgb):
    models = build_models("facexlib", weights_dir=weights)
    try:
        assert models.names == {"detector": "retinaface", "landmarks": "mediapipe",
                                "segmenter": "bisenet"}
        _check_boxes(models.detector.detect(rgb), 0.5)
        mask = models.segmenter.person_mask(rgb)
        assert mask.shape == rgb.shape[:2] and mask.dtype == np.float32
    finally:
        models.close()


@pytest.mark.parametrize("backend", ["fan", "facexlib"])
def test_build_models_needs_weights_dir(backend):
    with pytest.raises(ConfigError, match="--weights-dir"):
        build_models(backend)


def test_mediapipe_landmarks_array_matches_protobuf_fields():
    """The serialised-bytes fast path and the attribute fallback read the same numbers."""
    from mediapipe.framework.formats import landmark_pb2
    from ifmdm_data.faces.backends.mediapipe_backend import landmarks_array

    rng = np.random.default_rng(0)
    pts = rng.uniform(0.05, 0.95, (478, 3)).astype(np.float32)
    msg = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in pts:
        msg.landmark.add(x=float(x), y=float(y), z=float(z))
    out = landmarks_array(msg)
    assert out.shape == (478, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, pts)
    # a zero coordinate is not serialised (proto3) and visibility adds bytes: fallback path
    msg.landmark[3].x = 0.0
    msg.landmark[9].visibility = 0.7
    pts[3, 0] = 0.0
    np.testing.assert_array_equal(landmarks_array(msg), pts)
    assert landmarks_array(landmark_pb2.NormalizedLandmarkList()).shape == (0, 3)
