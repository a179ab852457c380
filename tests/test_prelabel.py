"""Pre-labeling from categories: detector loading, boxes -> labeled masks, batch /predict."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from backend.core.label_config import parse_label_config
from backend.core.settings import Settings, get_settings
from backend.io.images import TaskImage
from backend.prelabel.batch import predict_batch
from backend.prelabel.detector import Detection, get_detector, non_max_suppression
from backend.prelabel.run import category_prompts, prelabel_task
from backend.segmentation.masks import rle_to_mask
from backend.segmentation.service import get_segmentation
from tests.helpers import (
    LABEL_CONFIG,
    data_uri,
    encode_image,
    iou,
    predict_body,
    sam_env,
    save_tiny_grounding_dino,
    save_tiny_omdet_turbo,
    save_tiny_owlv2,
)
from tests.processes import ROOT

CONFIG = parse_label_config(LABEL_CONFIG)  # labels Disk, Background


@pytest.fixture(scope="module")
def tiny_owlv2(tmp_path_factory):
    return save_tiny_owlv2(tmp_path_factory.mktemp("owlv2"))


def two_disks(width=240, height=160):
    rng = np.random.default_rng(0)
    image = rng.normal(110, 10, (height, width, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    masks = []
    for (cx, cy, r), colour in [((60, 80, 35), (220, 40, 40)), ((175, 70, 30), (40, 40, 220))]:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        image[mask] = colour
        masks.append(mask)
    return image, masks


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    return save_tiny_grounding_dino(tmp_path_factory.mktemp("grounding-dino"))


@pytest.fixture(scope="module")
def tiny_omdet_turbo(tmp_path_factory):
    return save_tiny_omdet_turbo(tmp_path_factory.mktemp("omdet-turbo"))


@pytest.mark.parametrize("kind", ["owlv2", "grounding-dino", "omdet-turbo"])
def test_tiny_detectors_load_from_disk_and_detect_all_prompts_in_one_pass(kind, request):
    folder = request.getfixturevalue("tiny_" + kind.replace("-", "_"))
    detector = get_detector(str(folder))
    assert detector.kind == kind
    image, _ = two_disks()
    found = detector.detect(image, ["disk", "background"], threshold=0.0)
    assert found and {d.prompt for d in found} <= {0, 1}
    for detection in found:
        x0, y0, x1, y1 = detection.box
        assert 0 <= x0 < x1 <= 240 and 0 <= y0 < y1 <= 160 and 0 <= detection.score <= 1
    assert len(non_max_suppression(found, 0.5)) <= len(found)


FRESH_OMDET = """
import importlib.machinery, importlib.util, sys
import numpy as np
if sys.argv[2] == "hide-timm":  # as if timm were not installed: only the backend's own shim can be found
    class HideTimm:
        def find_spec(self, name, path=None, target=None):
            if name == "timm":
                return importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if "-packages" not in p])
    sys.meta_path.insert(0, HideTimm())
from backend.core.errors import ModelUnavailableError
from backend.prelabel.detector import get_detector
try:
    found = get_detector(sys.argv[1]).detect(np.zeros((90, 120, 3), np.uint8), ["disk", "background"], 0.0)
except ModelUnavailableError as exc:
    print("refused:", exc)
    raise SystemExit
assert found and all(0 <= d.box[0] < d.box[2] <= 120 and 0 <= d.box[1] < d.box[3] <= 90 for d in found)
assert importlib.util.find_spec("torchvision") is None, "the shim must not stay visible as torchvision"
assert not [k for k in sys.modules if k.split(".")[0] == "torchvision"]
import mobile_sam.modeling.tiny_vit_sam as tiny_vit
assert "_shims" in tiny_vit.register_model.__code__.co_filename  # MobileSAM kept the timm shim
print("detected", len(found))
"""


@pytest.mark.parametrize("timm", ["installed", "hide-timm"])
def test_omdet_turbo_in_a_fresh_process_uses_real_timm_without_torchvision_or_says_what_is_missing(
        tiny_omdet_turbo, timm):
    """The real timm runs OmDet-Turbo's Swin with the shim's import-time names, which then leave sys.modules
    (transformers keeps its no-torchvision fallbacks); without timm, one error names the setting and the fix."""
    done = subprocess.run([sys.executable, "-c", FRESH_OMDET, str(tiny_omdet_turbo), timm], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if timm == "installed":
        assert done.stdout.startswith("detected"), done.stdout
    else:
        assert "refused: DETECTOR_MODEL" in done.stdout and "timm is not installed" in done.stdout
        assert "requirements-no-deps.txt" in done.stdout, done.stdout


def test_a_folder_of_another_kind_of_model_is_one_clear_detector_error(tiny_families):
    from backend.core.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="model type 'sam2' is not a text-grounded detector") as error:
        get_detector(str(tiny_families["sam2"]))
    assert "DETECTOR_MODEL" in str(error.value) and "omdet-turbo" in str(error.value)


def test_aliases_and_caption_become_prompts():
    settings = Settings(category_aliases='{"Disk": ["round plate", "coin"]}', prompt_field="caption")
    pairs = category_prompts(CONFIG, settings, {"data": {"caption": "a red disk, something else"}})
    assert pairs[:3] == [("Disk", "round plate"), ("Disk", "coin"), ("Background", "Background")]
    assert pairs[3:] == [("Disk", "a red disk"), ("Disk", "something else")]


class BoxesOf:
    """A detector stand-in that finds the given boxes (to check what the pipeline does with boxes)."""

    def __init__(self, detections):
        self.detections = detections
        self.prompts = None

    def detect(self, image, prompts, threshold):
        self.prompts = prompts
        return [d for d in self.detections if d.score >= threshold]


def test_each_detected_box_becomes_a_labeled_mask_of_its_object(configure, monkeypatch):
    configure(SAM_ENGINE="grabcut", DETECTOR_THRESHOLD="0.3")
    image, masks = two_disks()
    boxes = [Detection((22, 42, 98, 118), 0.9, 0), Detection((142, 37, 208, 103), 0.7, 1),
             Detection((0, 0, 10, 10), 0.1, 0)]  # below the threshold
    stand_in = BoxesOf(boxes)
    monkeypatch.setattr("backend.prelabel.run.get_detector", lambda *a: stand_in)
    decodes = []
    original_decode = TaskImage._decode
    monkeypatch.setattr(TaskImage, "_decode", lambda self, *a: decodes.append(1) or original_decode(self, *a))
    task = {"id": 3, "data": {"image": data_uri(encode_image(image))}}
    counts = get_segmentation().counters.snapshot()["counts"]
    prediction = prelabel_task(task, CONFIG, get_settings())
    after = get_segmentation().counters.snapshot()["counts"]  # /metrics: what the time per image goes to
    assert after["detector_runs"] == counts.get("detector_runs", 0) + 1
    assert after["decoder_runs"] == counts.get("decoder_runs", 0) + 2
    assert stand_in.prompts == ["Disk", "Background"]  # all categories asked at once
    assert len(decodes) == 1  # the detector and the encoder (cold cache) share one decoded image
    assert [r["value"]["brushlabels"] for r in prediction["result"]] == [["Disk"], ["Background"]]
    for result, mask in zip(prediction["result"], masks, strict=True):
        assert iou(rle_to_mask(result["value"]["rle"], 160, 240), mask) > 0.85
    assert prediction["score"] == pytest.approx(0.8) and prediction["model_version"] == "grabcut"


def test_batch_predict_with_real_detector_and_sam_keeps_going_past_a_broken_task(
        configure, tiny_checkpoints, tiny_owlv2, caplog):
    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), DETECTOR_MODEL=str(tiny_owlv2),
              DETECTOR_THRESHOLD="0", MAX_DETECTIONS="3")
    import _wsgi

    image, _ = two_disks()
    body = predict_body(data_uri(encode_image(image)), None)
    body["tasks"].insert(0, {"id": 9, "data": {"image": "data:image/png;base64,AAAA"}})
    response = _wsgi.app.test_client().post("/predict", json=body)
    assert response.status_code == 200
    broken, good = response.json["results"]
    assert broken == [] and "task 9 failed" in caplog.text and "not a readable image" in caplog.text
    assert 1 <= len(good["result"]) <= 3 and good["model_version"].startswith("vit_t-")
    for region in good["result"]:
        assert region["value"]["brushlabels"][0] in ("Disk", "Background")
        assert rle_to_mask(region["value"]["rle"], 160, 240).shape == (160, 240)


def test_everything_mode_segments_without_categories(configure, tiny_checkpoints):
    # Random weights predict low IoUs: the thresholds are opened so that masks come out (0: keep all).
    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), PRELABEL_MODE="everything",
              EVERYTHING_POINTS_PER_SIDE="4", MAX_DETECTIONS="5", EVERYTHING_IOU_THRESHOLD="-100",
              EVERYTHING_STABILITY_THRESHOLD="0")
    image, _ = two_disks()
    task = {"id": 4, "data": {"image": data_uri(encode_image(image))}}
    prediction = prelabel_task(task, CONFIG, get_settings())
    assert 1 <= len(prediction["result"]) <= 5
    for region in prediction["result"]:
        assert region["value"]["brushlabels"] == ["Disk"]  # the first label of the mask control
        assert rle_to_mask(region["value"]["rle"], 160, 240).any()
    configure(SAM_ENGINE="grabcut", PRELABEL_MODE="everything")
    with pytest.raises(Exception, match="needs a SAM engine"):
        prelabel_task(task, CONFIG, get_settings())


def test_the_next_tasks_image_downloads_while_this_task_is_computed(configure, monkeypatch):
    """Retrieve Predictions on several tasks: task 2's image is requested while task 1 is still being pre-labeled
    (a loopback server records the requests), and task 2 then reads it from the image cache (one request)."""
    import time

    from backend.prelabel import run
    from tests.hostile import HostileServer

    image, _ = two_disks()
    server = HostileServer(encode_image(image))
    server.files = {"/a.png": encode_image(image), "/b.png": encode_image(image[::-1].copy())}
    server.delays["/b.png"] = 0.5  # still downloading when task 2's turn comes: that turn waits for it
    configure(SAM_ENGINE="grabcut", IMAGE_URL_HOSTS=f"127.0.0.1:{server.port}", PRELABEL_MODE="categories")
    seen_while_computing = []

    def slow_route(service, task_image, config, settings, task, project_id):
        if task["id"] == 1:  # wait (up to 3 s) for the prefetch of task 2's image
            deadline = time.monotonic() + 3
            while "/b.png" not in server.paths() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_while_computing.append("/b.png" in server.paths())
        return []

    monkeypatch.setitem(run.ROUTES, "boxes", slow_route)
    try:
        tasks = [{"id": i, "data": {"image": f"{server.url}/{name}"}} for i, name in ((1, "a.png"), (2, "b.png"))]
        assert predict_batch(tasks, LABEL_CONFIG, CONFIG) == [[], []]
        assert seen_while_computing == [True]
        assert server.paths("/b.png") == ["/b.png"]  # downloaded once: task 2's turn read the cached copy
    finally:
        server.close()


def test_the_owlv2_vision_tower_on_onnx_runtime_gives_the_eager_detections(tiny_owlv2, tmp_path, monkeypatch):
    """ENCODER_RUNTIME for the detector: OWLv2's vision tower exported once (MODEL_DIR/onnx), its detections equal
    eager PyTorch's; Grounding DINO (no such seam) stays eager."""
    eager = get_detector(str(tiny_owlv2), "cpu", "torch")
    fast = get_detector(str(tiny_owlv2), "cpu", "onnx", str(tmp_path / "onnx"))
    assert eager.runtime == "torch" and fast.runtime == "onnx"
    [export] = (tmp_path / "onnx").glob("owlv2-vision-*.onnx")
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = rng.integers(0, 255, (160, 240, 3), dtype=np.uint8)
        prompts = ["disk", "background", "object"]
        a, b = eager.detect(image, prompts, 0.0), fast.detect(image, prompts, 0.0)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose([d.box for d in a], [d.box for d in b], atol=1e-3)
        np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-5)
        assert [d.prompt for d in a] == [d.prompt for d in b]
    assert get_detector(str(tiny_owlv2), "cpu", "onnx", str(tmp_path / "onnx")) is fast  # loaded once
    assert export.stat().st_size > 1000

    def eager_encoder(*args, **kwargs):
        raise AssertionError("the eager vision encoder ran")

    monkeypatch.setattr(fast.model.owlv2.vision_model.encoder, "forward", eager_encoder)
    assert fast.detect(image, prompts, 0.0)  # ONNX Runtime answered: the eager tower was not called


def test_caption_phrases_are_bounded_and_checked():
    """5000 phrases in a caption took SAM 3 78 s and 11 GB; a lone surrogate made the tokenizer raise TypeError."""
    from backend.core.errors import InputError

    settings = Settings(max_prompt_phrases=8)
    many = {"id": 4, "data": {"caption": ",".join(f"thing{i}" for i in range(5000))}}
    with pytest.raises(InputError, match="5000 phrases in the caption field") as error:
        category_prompts(CONFIG, settings, many)
    assert error.value.where == "task 4 caption"
    with pytest.raises(InputError, match="lone surrogate"):
        category_prompts(CONFIG, settings, {"id": 5, "data": {"caption": "a red \ud800 car"}})
    with pytest.raises(InputError, match="at most 200"):
        category_prompts(CONFIG, settings, {"id": 6, "data": {"caption": "x" * 201}})
    assert len(category_prompts(CONFIG, settings, {"id": 7, "data": {"caption": "a, b, c"}})) == 5
