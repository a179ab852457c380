"""SAM 3 behind the engine table: concept pre-labeling, "find all like this", phrases, and clicks through the
tracker, on a tiny random-weight SAM 3 saved in facebook/sam3's layout and loaded as the real one is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from backend.core.errors import InputError, ModelUnavailableError
from backend.core.label_config import parse_label_config
from backend.core.settings import Settings, get_settings
from backend.prelabel.batch import predict_batch
from backend.prelabel.detector import box_iou
from backend.prelabel.run import prelabel_task
from backend.segmentation.concept_prompts import parse_concept_context
from backend.segmentation.masks import rle_to_mask
from backend.segmentation.prompts import Prompt
from backend.segmentation.registry import load_segmenter
from backend.segmentation.sam3 import ConceptQuery
from backend.segmentation.service import get_segmentation
from tests.helpers import (
    data_uri,
    disk_grid,
    disk_image,
    encode_image,
    keypoint,
    load_through_hub_cache,
    predict_body,
    rectangle,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = (ROOT / "label_configs" / "concepts.xml").read_text()
SIDE = 112  # the tiny model's input side (facebook/sam3: 1008)


def settings_for(folder: Path, **extra) -> Settings:
    return Settings(sam_engine="sam3", sam_checkpoint=str(folder), sam_download=False, **extra)


def pixel_values(image: np.ndarray) -> torch.Tensor:
    """Sam3ImageProcessor's preprocessing: stretch to the square side, rescale to 0..1, normalize with 0.5 / 0.5."""
    resized = np.asarray(Image.fromarray(image).resize((SIDE, SIDE), Image.BILINEAR), np.float32) / 255.0
    return torch.from_numpy((resized - 0.5) / 0.5).permute(2, 0, 1)[None]


def reference_instances(folder: Path, image: np.ndarray, text: str, threshold: float, boxes=None, labels=None):
    """Sam3Model's own forward on the pixels, post-processed step for step as
    Sam3ImageProcessor.post_process_instance_segmentation does: (masks, boxes, scores), best first."""
    from transformers import AutoTokenizer, Sam3Model

    model = Sam3Model.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)([text], padding="max_length", max_length=32, return_tensors="pt")
    height, width = image.shape[:2]
    extra = {}
    if boxes is not None:  # Sam3Processor: XYXY pixels -> relative -> centre, width, height
        relative = torch.tensor(boxes, dtype=torch.float32) / torch.tensor([width, height, width, height])
        x0, y0, x1, y1 = relative.unbind(-1)
        extra = {"input_boxes": torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)[None],
                 "input_boxes_labels": torch.tensor([labels])}
    with torch.no_grad():
        out = model(pixel_values=pixel_values(image), input_ids=tokens.input_ids,
                    attention_mask=tokens.attention_mask, **extra)
    scores = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
    keep = scores > threshold
    masks = F.interpolate(out.pred_masks[0][keep].sigmoid()[None], size=(height, width), mode="bilinear",
                          align_corners=False)[0] > 0.5
    found_boxes = out.pred_boxes[0][keep] * torch.tensor([width, height, width, height])
    order = torch.argsort(scores[keep], descending=True)
    return masks[order].numpy(), found_boxes[order].numpy(), scores[keep][order].numpy()


@pytest.fixture(scope="module")
def segmenter(tiny_sam3):
    return load_segmenter(settings_for(tiny_sam3, embedding_float16=False))


def test_the_checkpoint_loads_detector_tracker_and_tokenizer_with_one_backbone(segmenter, tiny_sam3):
    assert segmenter.model.vision_encoder.backbone is segmenter.detector.vision_encoder.backbone
    assert segmenter.fingerprint.startswith("sam3-")
    from transformers import Sam3TrackerModel

    # every tracker weight came from the checkpoint: the same as a plain Sam3TrackerModel load of it
    reference = Sam3TrackerModel.from_pretrained(tiny_sam3).state_dict()
    ours = segmenter.model.state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


@pytest.mark.parametrize("query", ["phrase", "exemplar", "phrase and negative exemplar"])
def test_concepts_equal_sam3_models_own_post_processed_output(query, segmenter, tiny_sam3):
    image = disk_grid(160, cells=2)
    boxes, labels, text = None, None, "disk"
    if query != "phrase":
        boxes, labels = [[10.0, 12.0, 70.0, 75.0]], [1]
        text = "visual" if query == "exemplar" else "disk"
    if query == "phrase and negative exemplar":
        labels = [0]
    expected_masks, expected_boxes, expected_scores = reference_instances(tiny_sam3, image, text, 0.2, boxes, labels)
    assert len(expected_scores) > 0  # the tiny model's scores spread around 0.25: some pass 0.2
    concept = ConceptQuery(text=text)
    if boxes is not None:
        concept = ConceptQuery(text=text, boxes=np.array(boxes, np.float32) / 160, box_labels=np.array(labels))
    [found] = segmenter.concepts(segmenter.embed(image), [concept], 0.2)
    assert len(found) == len(expected_scores)
    np.testing.assert_allclose([f.score for f in found], expected_scores, atol=1e-5)
    np.testing.assert_allclose([f.box for f in found], expected_boxes, atol=1e-3)
    for instance, mask in zip(found, expected_masks, strict=True):
        assert instance.mask.shape == (160, 160) and (instance.mask != mask).mean() < 1e-4


def test_a_negative_exemplar_changes_the_answer(segmenter):
    image = disk_grid(160, cells=2)
    embedding = segmenter.embed(image)
    box = np.array([[0.06, 0.07, 0.44, 0.47]], np.float32)
    positive, negative = segmenter.concepts(embedding, [ConceptQuery(boxes=box, box_labels=np.array([1])),
                                                        ConceptQuery(boxes=box, box_labels=np.array([0]))], 0.0)
    assert [i.score for i in positive] != [i.score for i in negative]


@pytest.mark.parametrize("prompt", [
    Prompt(points=np.array([[60.0, 50.0]], np.float32), labels=np.array([1])),
    Prompt(points=np.array([[60.0, 50.0], [5.0, 5.0]], np.float32), labels=np.array([1, 0]),
           box=np.array([20, 20, 110, 100], np.float32)),
])
def test_clicks_and_boxes_equal_the_tracker_forward(prompt, segmenter, tiny_sam3):
    from transformers import Sam3TrackerModel

    image, _ = disk_image(160, 120)
    result = segmenter.decode(segmenter.embed(image), prompt)
    tracker = Sam3TrackerModel.from_pretrained(tiny_sam3).eval()
    scale = np.array([SIDE / 160, SIDE / 120], np.float32)  # Sam3TrackerProcessor: coordinates to the square input
    inputs = {"input_points": torch.tensor(prompt.points * scale)[None, None],
              "input_labels": torch.tensor(prompt.labels)[None, None]}
    if prompt.box is not None:
        inputs["input_boxes"] = torch.tensor(prompt.box.reshape(2, 2) * scale).reshape(1, 1, 4)
    with torch.no_grad():
        out = tracker(pixel_values=pixel_values(image), multimask_output=prompt.is_single_click, **inputs)
    best = int(out.iou_scores[0, 0].argmax())
    low_res = out.pred_masks[0, 0, best]
    np.testing.assert_allclose(result.low_res_logits[0], low_res.numpy(), rtol=1e-4, atol=1e-7)
    expected = F.interpolate(low_res[None, None], (120, 160), mode="bilinear", align_corners=False)[0, 0] > 0
    assert (result.mask != expected.numpy()).mean() < 1e-4
    assert result.score == pytest.approx(float(out.iou_scores[0, 0, best]), abs=1e-5)


def test_prelabeling_runs_the_backbone_once_per_image_for_every_label(tiny_sam3, configure):
    configure(SAM_ENGINE="sam3", SAM_CHECKPOINT=str(tiny_sam3), PRELABEL_DETECTOR="sam3", DETECTOR_THRESHOLD="0.2",
              MAX_DETECTIONS="6", CATEGORY_ALIASES=json.dumps({"Vehicle": ["car", "truck"]}), EMBEDDING_FLOAT16="false")
    service = get_segmentation()
    segmenter = service.engine.get()
    runs = []
    hook = segmenter.backbone.register_forward_hook(lambda *args: runs.append(1))
    try:
        image = disk_grid(160, cells=2)
        task = {"id": 7, "data": {"image": data_uri(encode_image(image)), "caption": "a red disk"}}
        config = parse_label_config(CONFIG)
        prediction = prelabel_task(task, config, get_settings(), service)
        assert len(runs) == 1  # 3 labels, 4 phrases with the aliases, 5 with the caption: one backbone pass
        [again] = predict_batch([task], CONFIG, config)  # Retrieve Predictions: the cached embedding, no second pass
        def without_ids(items):
            return [{k: v for k, v in item.items() if k != "id"} for item in items]

        assert len(runs) == 1 and without_ids(again["result"]) == without_ids(prediction["result"])
    finally:
        hook.remove()
    items = prediction["result"]
    assert 1 <= len(items) <= 6 and prediction["model_version"] == "sam3-tiny-sam3"
    assert {i["value"]["brushlabels"][0] for i in items} <= {"Object", "Person", "Vehicle"}
    assert all(i["from_name"] == "tag" and i["score"] > 0.2 for i in items)
    # the regions are the concepts' own instances, NMS'd per label, best first
    phrases = ["Object", "Person", "car", "truck", "a red disk"]
    found = segmenter.concepts(segmenter.embed(image), [ConceptQuery(text=p) for p in phrases], 0.2)
    instances = {round(i.score, 6): i for query in found for i in query}
    by_label: dict[str, list] = {}
    for item in items:
        instance = instances[round(item["score"], 6)]
        assert np.array_equal(rle_to_mask(item["value"]["rle"], 160, 160), instance.mask)
        by_label.setdefault(item["value"]["brushlabels"][0], []).append(instance.box)
    assert all(box_iou(a, b) < 0.5 for boxes in by_label.values() for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)


def test_an_exemplar_box_and_a_phrase_come_back_as_labeled_regions(tiny_sam3, configure):
    configure(SAM_ENGINE="sam3", SAM_CHECKPOINT=str(tiny_sam3), DETECTOR_THRESHOLD="0.2", MAX_DETECTIONS="4",
              EMBEDDING_FLOAT16="false")
    import _wsgi

    client = _wsgi.app.test_client()
    image = disk_grid(160, cells=2)
    url = data_uri(encode_image(image))
    exemplar = {**rectangle(6, 8, 38, 39, label="Vehicle", width=160, height=160), "from_name": "exemplar"}
    phrase = {"from_name": "phrase", "to_name": "image", "type": "textarea", "value": {"text": ["disk_Person"]}}
    segmenter = get_segmentation().engine.get()
    embedding = segmenter.embed(image)
    for item, label, query in (
            (exemplar, "Vehicle", ConceptQuery(boxes=np.array([[0.06, 0.08, 0.44, 0.47]], np.float32),
                                               box_labels=np.array([1]))),
            (phrase, "Person", ConceptQuery(text="disk"))):
        response = client.post("/predict", json=predict_body(url, [item], config=CONFIG))
        assert response.status_code == 200, response.json
        prediction = response.json["results"][0]
        regions = prediction["result"]
        assert 1 <= len(regions) <= 4
        assert all(r["type"] == "brushlabels" and r["from_name"] == "tag" and r["value"]["brushlabels"] == [label]
                   for r in regions)
        [found] = segmenter.concepts(embedding, [query], 0.2)
        masks = [rle_to_mask(r["value"]["rle"], 160, 160) for r in regions]
        assert np.array_equal(masks[0], found[0].mask) and regions[0]["score"] == pytest.approx(found[0].score)
    # an ordinary click of the same config still goes to the tracker
    response = client.post("/predict", json=predict_body(url, [keypoint(30, 30, label="Object", width=160,
                                                                        height=160)], config=CONFIG))
    assert response.status_code == 200 and len(response.json["results"][0]["result"]) == 1


def test_concept_contexts_are_read_and_bad_ones_refused():
    config = parse_label_config(CONFIG)

    def text(value):
        return {"type": "textarea", "from_name": "phrase", "value": {"text": [value]}}

    def box(label, **extra):
        return {"type": "rectanglelabels", "from_name": "exemplar",
                "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": [label]}, **extra}

    assert parse_concept_context({"result": [text("red car_Vehicle")]}, config).label == "Vehicle"
    assert parse_concept_context({"result": [text("red car_Vehicle")]}, config).text == "red car"
    assert parse_concept_context({"result": [text("a walking person")]}, config).label == "Person"
    request = parse_concept_context({"result": [box("Vehicle"), box("Negative"), box("Vehicle", is_positive=False)]},
                                    config)
    assert request.label == "Vehicle" and [b[4] for b in request.boxes] == [True, False, False]
    query = request.to_query()
    assert query.text == "visual" and query.box_labels.tolist() == [1, 0, 0]
    np.testing.assert_allclose(query.boxes[0], [0.1, 0.1, 0.3, 0.3])
    # an ordinary smart box (rect control) or click is not a concept request
    ordinary = {**box("Vehicle"), "from_name": "rect"}
    assert parse_concept_context({"result": [ordinary]}, config) is None
    for context, message in (
            ({"result": [text("red car_Boat")]}, "unknown label 'Boat'"),
            ({"result": [text("something")]}, "names none of the labels"),
            ({"result": [box("Negative")]}, "all negative"),
            ({"result": [box("Boat")]}, "unknown label 'Boat'"),
            ({"result": [{**box("Vehicle"), "value": {"x": 90, "y": 10, "width": 20, "height": 5}}]}, "outside"),
            ({"result": [text("x" * 201)]}, "at most 200")):
        with pytest.raises(InputError, match=message):
            parse_concept_context(context, config)


def test_a_missing_or_gated_checkpoint_gives_one_clear_error_and_the_server_keeps_serving(
        tiny_sam3, tiny_checkpoints, configure, tmp_path):
    with pytest.raises(ModelUnavailableError) as missing:
        load_segmenter(settings_for(tmp_path / "nowhere"))
    message = str(missing.value)
    assert missing.value.where == "SAM_CHECKPOINT" and "huggingface.co/facebook/sam3" in message
    assert "SAM License" in message and "SAM_CHECKPOINT" in message

    # MobileSAM serves clicks; a phrase needs SAM 3 from SAM3_CHECKPOINT, which is missing
    from tests.helpers import sam_env

    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), SAM3_CHECKPOINT=str(tmp_path / "nowhere"))
    import _wsgi

    client = _wsgi.app.test_client()
    image, _ = disk_image()
    url = data_uri(encode_image(image))
    phrase = {"from_name": "phrase", "to_name": "image", "type": "textarea", "value": {"text": ["disk_Object"]}}
    response = client.post("/predict", json=predict_body(url, [phrase], config=CONFIG))
    assert response.status_code == 503
    assert "SAM3_CHECKPOINT" in response.json["error"] and "facebook/sam3" in response.json["error"]
    click = client.post("/predict", json=predict_body(url, [keypoint(40, 50, label="Object")], config=CONFIG))
    assert click.status_code == 200 and click.json["results"][0]["result"]
    assert client.get("/health").json["status"] == "UP"

    # ... and once SAM3_CHECKPOINT names a SAM 3, the same request is answered beside MobileSAM
    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), SAM3_CHECKPOINT=str(tiny_sam3), DETECTOR_THRESHOLD="0")
    response = _wsgi.app.test_client().post("/predict", json=predict_body(url, [phrase], config=CONFIG))
    assert response.status_code == 200 and response.json["results"][0]["result"]


def test_the_default_hub_id_loads_from_the_hub_cache_offline_and_a_gated_miss_names_the_licence(tiny_sam3, tmp_path):
    done = load_through_hub_cache("sam3", tmp_path / "filled", "facebook/sam3", tiny_sam3)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "sam3-sam3"
    done = load_through_hub_cache("sam3", tmp_path / "empty")  # as a gated repository without access: the one error
    assert done.returncode != 0
    assert "SAM_CHECKPOINT" in done.stderr and "https://huggingface.co/facebook/sam3" in done.stderr


def test_the_roi_align_stand_in_samples_as_torchvision_does():
    from backend.segmentation import compat

    class Module:
        pass

    module = Module()
    compat.provide_torchvision_ops(module)
    roi_align = module.torchvision.ops.roi_align
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    feature = torch.stack([xs, ys, torch.ones_like(xs)])[None]  # channels: x, y, 1
    out = roi_align(feature, [torch.tensor([[2.0, 1.0, 6.0, 5.0]])], 2)
    # bins of 2x2 pixels, 2x2 samples each at +0.5 and +1.5: the mean of a linear ramp is the bin's centre
    np.testing.assert_allclose(out[0, 0].numpy(), [[3.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(out[0, 1].numpy(), [[2.0, 2.0], [4.0, 4.0]])
    np.testing.assert_allclose(out[0, 2].numpy(), np.ones((2, 2)))
    # outside the map (beyond -1) samples are 0; at the far edge they are clamped to the last pixel
    outside = roi_align(feature, [torch.tensor([[-5.0, -5.0, -3.0, -3.0], [8.6, 6.6, 9.6, 7.6]])], 1)
    assert float(outside[0, 2]) == 0.0
    assert float(outside[1, 0]) == pytest.approx(9.0) and float(outside[1, 1]) == pytest.approx(7.0)
