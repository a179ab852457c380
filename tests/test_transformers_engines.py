"""SAM 2.1 and SAM-HQ (transformers) behind the engine table: loading, exact decoding, float16, everything
mode, fine-tuning, model versions and the HTTP routes, on tiny random-weight models saved with save_pretrained."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.core.errors import ModelUnavailableError
from backend.core.label_config import parse_label_config
from backend.core.settings import Settings, get_settings
from backend.core.versions import model_version
from backend.prelabel.run import prelabel_task
from backend.segmentation.masks import rle_to_mask
from backend.segmentation.prompts import Prompt
from backend.segmentation.registry import load_segmenter
from tests.helpers import (
    LABEL_CONFIG,
    TRANSFORMERS_FAMILIES,
    data_uri,
    disk_grid,
    disk_image,
    encode_image,
    iou,
    keypoint,
    load_through_hub_cache,
    predict_body,
    rectangle,
    sam_env,
)

FAMILIES = list(TRANSFORMERS_FAMILIES)
CLICK = Prompt(points=np.array([[120.0, 100.0]], np.float32), labels=np.array([1]))
BOX_AND_CLICKS = Prompt(points=np.array([[120.0, 100.0], [10.0, 10.0]], np.float32), labels=np.array([1, 0]),
                        box=np.array([60, 40, 200, 160], np.float32))
BOX = Prompt(box=np.array([60, 40, 200, 160], np.float32))


def settings_for(family: str, folder: Path, **extra) -> Settings:
    """Settings made directly (not from the environment) still keep ONNX exports in the session's MODEL_DIR."""
    extra = {"model_dir": os.environ["MODEL_DIR"], **extra}
    return Settings(sam_engine=family, sam_checkpoint=str(folder), sam_download=False, **extra)


def processor_frame(family: str, coords: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel coordinates as the families' processors map them: Sam2Processor stretches to 1024x1024,
    SamHQ's (SAM's) scales the long side to 1024 and rounds the short one."""
    if family == "sam2":
        return coords * np.array([1024 / width, 1024 / height], np.float32)
    scale = 1024 / max(height, width)
    new_height, new_width = int(height * scale + 0.5), int(width * scale + 0.5)
    return coords * np.array([new_width / width, new_height / height], np.float32)


def postprocessed(family: str, low_res: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Low-res logits to the image's mask as the processors' post_process_masks do (SAM-HQ: up to the
    1024 frame, the padding cut off, then to the image size; SAM 2.1: straight to the image size)."""
    import torch.nn.functional as F

    if family == "sam_hq":
        scale = 1024 / max(height, width)
        frame = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
        low_res = frame[..., :int(height * scale + 0.5), :int(width * scale + 0.5)]
    return (F.interpolate(low_res, (height, width), mode="bilinear", align_corners=False) > 0).numpy()


def model_inputs(family: str, prompt: Prompt, height: int, width: int) -> dict:
    """The transformers model's own forward inputs for `prompt` (points 1x1xNx2, boxes 1x1x4)."""
    inputs = {}
    if len(prompt.points):
        inputs["input_points"] = torch.tensor(processor_frame(family, prompt.points, height, width))[None, None]
        inputs["input_labels"] = torch.tensor(prompt.labels)[None, None]
    if prompt.box is not None:
        corners = processor_frame(family, prompt.box.reshape(2, 2), height, width)
        inputs["input_boxes"] = torch.tensor(corners, dtype=torch.float32).reshape(1, 1, 4)
    return inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_a_save_pretrained_folder_loads_with_every_weight(family, tiny_families):
    from transformers import AutoModel

    segmenter = load_segmenter(settings_for(family, tiny_families[family]))
    saved = AutoModel.from_pretrained(tiny_families[family]).state_dict()
    ours = segmenter.model.state_dict()
    assert set(ours) == set(saved)
    assert all(torch.equal(ours[name], saved[name]) for name in saved)
    assert segmenter.fingerprint.startswith(f"{family}-")


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_of_a_cached_embedding_equals_the_transformers_forward(family, tiny_families):
    """Points (three candidates), box with clicks (one mask) and a refining mask prompt: our decode of the
    cached float32 embedding (eager encoder) gives the logits and scores of the model's own forward on the pixels."""
    segmenter = load_segmenter(settings_for(family, tiny_families[family], embedding_float16=False,
                                            encoder_runtime="torch"))
    image, _ = disk_image(300, 200)
    embedding = segmenter.embed(image)
    pixel_values, _ = segmenter.preprocess(image)
    model = segmenter.model
    previous = None
    for prompt, multimask in ((CLICK, True), (BOX_AND_CLICKS, False), (BOX, False)):
        with torch.inference_mode():
            theirs = model(pixel_values=pixel_values, multimask_output=multimask,
                           **model_inputs(family, prompt, 200, 300))
            logits, scores = segmenter.decoder_logits(segmenter.decoder, embedding, [prompt], multimask)
        assert logits.shape[0] == 1 and logits.shape[1] == (3 if multimask else 1)
        torch.testing.assert_close(logits, theirs.pred_masks[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(scores, theirs.iou_scores[0], rtol=0, atol=1e-5)
        result = segmenter.decode(embedding, prompt)
        best = int(torch.argmax(theirs.iou_scores[0, 0]))  # one click: the best-scored of the three
        assert result.score == pytest.approx(float(theirs.iou_scores[0, 0, best]), abs=1e-5)
        np.testing.assert_allclose(result.low_res_logits, theirs.pred_masks[0, 0, best:best + 1].numpy(), atol=1e-5)
        expected = postprocessed(family, theirs.pred_masks[0, :, best:best + 1], 200, 300)[0, 0]
        assert result.mask.shape == (200, 300) and result.mask.any() and not result.mask.all()
        assert (result.mask != expected).mean() < 1e-3  # float rounding at the threshold, nothing more
        previous = result

    chosen = set()  # the three-mask choice follows the scores, whichever candidate wins (SAM-HQ sorts them)
    for x in (30.0, 90.0, 150.0, 210.0, 270.0):
        click = Prompt(points=np.array([[x, 100.0]], np.float32), labels=np.array([1]))
        with torch.inference_mode():
            theirs = model(pixel_values=pixel_values, multimask_output=True, **model_inputs(family, click, 200, 300))
        best = int(torch.argmax(theirs.iou_scores[0, 0]))
        chosen.add(best)
        assert segmenter.decode(embedding, click).score == pytest.approx(float(theirs.iou_scores[0, 0, best]),
                                                                         abs=1e-5)
    assert family == "sam_hq" or chosen != {0}, "no click in this test picks a candidate other than the first"

    refine = Prompt(points=np.array([[120.0, 100.0], [150.0, 90.0]], np.float32), labels=np.array([1, 1]))
    with torch.inference_mode():
        theirs = model(pixel_values=pixel_values, multimask_output=False,
                       input_masks=torch.from_numpy(previous.low_res_logits)[None],
                       **model_inputs(family, refine, 200, 300))
    ours = segmenter.decode(embedding, refine, mask_input=previous.low_res_logits)
    np.testing.assert_allclose(ours.low_res_logits, theirs.pred_masks[0, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_float16_embeddings_give_the_float32_masks(family, tiny_families):
    full = load_segmenter(settings_for(family, tiny_families[family], embedding_float16=False))
    half = load_segmenter(settings_for(family, tiny_families[family], embedding_float16=True))
    image, _ = disk_image(300, 200)
    embedding16 = half.embed(image)
    assert all(array.dtype == np.float16 for array in embedding16.arrays.values())
    assert len(embedding16.arrays) > 1  # features plus the family's extra maps
    embedding32 = full.embed(image)
    for prompt in (CLICK, BOX_AND_CLICKS, BOX):
        assert iou(half.decode(embedding16, prompt).mask, full.decode(embedding32, prompt).mask) >= 0.99


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_graph_encoders_of_each_family_give_the_eager_arrays_and_masks(family, runtime, tiny_families, tmp_path,
                                                                           monkeypatch):
    """ENCODER_RUNTIME=onnx / openvino (float32: see test_encoder_runtime) for SAM 2.1 / SAM-HQ: every array the
    decoder reads (features, high-res maps, early ViT features) with cosine >= 0.999, masks IoU >= 0.99 on 40
    clicks over 4 images, and the eager encoder not called; `auto` means OpenVINO for SAM-HQ and eager for SAM
    2.1 (bench encoder_runtime: OpenVINO's bfloat16 changed SAM 2.1's masks, ONNX Runtime was no faster)."""
    from backend.segmentation.graph_runtimes import openvino_runtime

    monkeypatch.setattr(openvino_runtime, "PRECISION", "f32")
    config = {"embedding_float16": False, "model_dir": str(tmp_path)}
    eager = load_segmenter(settings_for(family, tiny_families[family], encoder_runtime="torch", **config))
    fast = load_segmenter(settings_for(family, tiny_families[family], encoder_runtime=runtime, **config))
    auto = load_segmenter(settings_for(family, tiny_families[family], encoder_runtime="auto", **config))
    assert (eager.runtime, fast.runtime) == ("torch", runtime)
    assert auto.runtime == ("openvino" if family == "sam_hq" else "torch")
    monkeypatch.setattr(type(fast), "encode", lambda *a: pytest.fail("the eager encoder ran"))
    rng = np.random.default_rng(0)
    ious = []
    for index in range(4):
        image, _ = disk_image(300, 200, center=tuple(rng.uniform(0.3, 0.7, 2)), seed=index)
        ours = fast.embed(image)
        monkeypatch.undo()
        theirs = eager.embed(image)
        monkeypatch.setattr(type(fast), "encode", lambda *a: pytest.fail("the eager encoder ran"))
        assert set(ours.arrays) == set(theirs.arrays) and len(ours.arrays) > 1
        for name, array in theirs.arrays.items():
            x, y = array.ravel().astype(np.float64), ours.arrays[name].ravel().astype(np.float64)
            assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) >= 0.999, name
        for _ in range(10):
            click = Prompt(points=rng.uniform((0, 0), (300, 200), (1, 2)).astype(np.float32), labels=np.array([1]))
            ious.append(iou(eager.decode(theirs, click).mask, fast.decode(ours, click).mask))
    assert len(ious) == 40 and min(ious) >= 0.99


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_of_each_family_round_trip_through_the_caches(family, tiny_families, tmp_path):
    from backend.segmentation.embedding_cache import DiskStore, deserialize, serialize

    segmenter = load_segmenter(settings_for(family, tiny_families[family]))
    image, _ = disk_image(160, 120)
    embedding = segmenter.embed(image)
    back = deserialize(serialize(embedding))
    assert set(back.arrays) == set(embedding.arrays)
    assert all(np.array_equal(back.arrays[k], embedding.arrays[k]) for k in embedding.arrays)
    store = DiskStore(tmp_path / "embeddings", max_bytes=64 << 20)
    store.put("key", embedding)
    again = store.get("key")
    assert segmenter.decode(again, CLICK).score == segmenter.decode(embedding, CLICK).score


def test_model_versions_and_fingerprints_name_family_and_checkpoint(tiny_families):
    assert model_version(Settings(sam_engine="sam2")) == "sam2-sam2.1-hiera-tiny"
    assert model_version(Settings(sam_engine="sam_hq")) == "sam_hq-sam-hq-vit-base"
    assert model_version(Settings(sam_engine="sam2", sam_checkpoint="facebook/sam2.1-hiera-base-plus")) == \
        "sam2-sam2.1-hiera-base-plus"
    assert model_version(settings_for("sam2", tiny_families["sam2"]), "v2") == "sam2-tiny-sam2-v2"
    assert model_version(Settings(sam_engine="vit_t")) == "vit_t-mobile_sam"  # the existing engines unchanged
    fingerprints = {load_segmenter(settings_for(f, tiny_families[f])).fingerprint for f in FAMILIES}
    assert len(fingerprints) == 2  # embeddings of one family are never served to another


def test_missing_or_wrong_weights_give_one_clear_error(tiny_families, tmp_path):
    with pytest.raises(ModelUnavailableError) as missing:
        load_segmenter(settings_for("sam2", tmp_path / "nowhere"))
    assert missing.value.where == "SAM_CHECKPOINT" and "facebook/sam2.1-hiera-tiny" in str(missing.value)
    with pytest.raises(ModelUnavailableError, match="holds a 'sam_hq' model.*SAM_ENGINE=sam_hq"):
        load_segmenter(settings_for("sam2", tiny_families["sam_hq"]))
    official = tmp_path / "sam_vit_b_01ec64.pth"
    official.write_bytes(b"not used")
    with pytest.raises(ModelUnavailableError, match="loads a transformers model.*not the file sam_vit_b_01ec64.pth"):
        load_segmenter(settings_for("sam_hq", official))


def test_the_default_hub_id_loads_from_the_hub_cache_offline(tiny_families, tmp_path):
    """No SAM_CHECKPOINT: `facebook/sam2.1-hiera-tiny` resolves through huggingface_hub's cache (filled here in
    the hub's layout, as a download would leave it), the same from_pretrained path as on a networked machine."""
    done = load_through_hub_cache("sam2", tmp_path, "facebook/sam2.1-hiera-tiny", tiny_families["sam2"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "sam2-sam2.1-hiera-tiny"
    done = load_through_hub_cache("sam2", tmp_path / "again", SAM_CHECKPOINT="facebook/sam2.1-hiera-large")
    assert done.returncode != 0  # not in the cache: the one clear error
    assert "SAM_CHECKPOINT" in done.stderr and "HF_HUB_OFFLINE is set" in done.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_http_predict_health_and_setup_name_the_family(family, tiny_families, configure):
    configure(**sam_env(family, tiny_families[family]))
    import _wsgi

    client = _wsgi.app.test_client()
    image, _ = disk_image()
    url = data_uri(encode_image(image))
    for items in ([keypoint(40, 50)], [rectangle(20, 25, 40, 50)], [keypoint(40, 50), keypoint(5, 5, positive=False)]):
        response = client.post("/predict", json=predict_body(url, items))
        assert response.status_code == 200, response.json
        prediction = response.json["results"][0]
        assert prediction["model_version"] == f"{family}-tiny-{family}"
        assert prediction["result"][0]["value"]["format"] == "rle"
    health = client.get("/health").json
    assert health["engine"]["engine"] == family and health["engine"]["checkpoint"] == f"tiny-{family}"
    setup = client.post("/setup", json={"project": "3.1", "schema": predict_body(url, None)["label_config"]}).json
    assert setup["model_version"] == f"{family}-tiny-{family}"


@pytest.mark.parametrize("family", FAMILIES)
def test_everything_mode_prelabels_distinct_masks(family, tiny_families, configure):
    configure(**sam_env(family, tiny_families[family]), PRELABEL_MODE="everything", EVERYTHING_POINTS_PER_SIDE="6",
              EVERYTHING_IOU_THRESHOLD="0", EVERYTHING_STABILITY_THRESHOLD="0", MAX_DETECTIONS="5")
    image = disk_grid(160, cells=2)
    task = {"id": 1, "data": {"image": data_uri(encode_image(image))}}
    prediction = prelabel_task(task, parse_label_config(LABEL_CONFIG), get_settings())
    masks = [rle_to_mask(r["value"]["rle"], 160, 160) for r in prediction["result"]]
    assert 1 <= len(masks) <= 5 and all(m.any() for m in masks)
    assert all(iou(a, b) <= 0.7 for i, a in enumerate(masks) for b in masks[i + 1:])
    assert prediction["model_version"] == f"{family}-tiny-{family}"
    assert json.dumps(prediction)  # serializable as Label Studio stores it
