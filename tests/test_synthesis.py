"""Synthetic samples: generation annotations parsed, tiny SD2 / Kandinsky pipelines loaded from disk."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from backend.core.errors import InputError
from backend.core.settings import Settings, get_settings
from backend.segmentation.masks import rle_to_mask
from backend.synthesis.generate import generate_samples, is_generation_annotation, parse_generation
from tests.helpers import data_uri, disk_image, encode_image, save_tiny_inpainting

CONFIG = (__import__("pathlib").Path(__file__).resolve().parents[1] / "label_configs" / "synthesis.xml").read_text()


@pytest.fixture(scope="module")
def tiny_pipelines(tmp_path_factory):
    return save_tiny_inpainting(tmp_path_factory.mktemp("inpainting"))


def generation(region: dict, prompt="yellow block of wood", samples=2, engine="kandinsky", mode="add",
               negative="snow road") -> dict:
    result = [region,
              {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": [prompt]}},
              {"from_name": "negative_prompt", "to_name": "image", "type": "textarea", "value": {"text": [negative]}},
              {"from_name": "samples", "to_name": "image", "type": "number", "value": {"number": samples}},
              {"from_name": "engine", "to_name": "image", "type": "choices", "value": {"choices": [engine]}},
              {"from_name": "mode", "to_name": "image", "type": "choices", "value": {"choices": [mode]}}]
    return {"id": 31, "result": result}


def rect(x=25, y=25, w=30, h=40, label="Object") -> dict:
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 200,
            "original_height": 150, "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": [label]}}


def brush(mask: np.ndarray, label="Vehicle") -> dict:
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": mask.shape[1],
            "original_height": mask.shape[0],
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


def test_generation_annotation_is_read_with_region_label_texts_and_choices():
    settings = Settings()
    request = parse_generation(generation(rect()), 150, 200, settings)
    assert request.label == "Object" and request.samples == 2 and request.engine == "kandinsky"
    assert request.prompt == "yellow block of wood" and request.negative_prompt == "snow road"
    ys, xs = np.nonzero(request.mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (50, 109, 37, 97)
    assert is_generation_annotation(generation(rect())) and not is_generation_annotation({"result": [rect()]})
    removal = parse_generation(generation(rect(), prompt="", mode="remove"), 150, 200, settings)
    assert removal.prompt == settings.synthesis_remove_prompt


@pytest.mark.parametrize("annotation, message", [
    (generation(rect(w=0, h=0)), "mark the region"),
    (generation(rect(), prompt=" "), "write what should appear"),
    (generation(rect(), engine="dalle"), "unknown engine 'dalle'"),
    (generation(rect(), mode="swap"), "unknown mode 'swap'"),
    (generation(rect(), samples=99), "samples must be 1..8"),
    (generation(brush(np.ones((10, 10), bool))), "region unusable"),
])
def test_bad_generation_requests_say_what_is_wrong(annotation, message):
    with pytest.raises(InputError, match=message) as error:
        parse_generation(annotation, 150, 200, Settings())
    assert error.value.where == "annotation 31"


@pytest.mark.parametrize("engine", ["kandinsky", "sd2"])
def test_samples_keep_the_image_outside_the_region_and_carry_the_objects_mask(engine, tiny_pipelines, configure,
                                                                            tmp_path):
    configure(SAM_ENGINE="grabcut", OUTPUT_DIR=str(tmp_path / "out"), OUTPUT_URL="http://files.test/out",
              SYNTHESIS_STEPS="2", SYNTHESIS_SIZE="64", **{k: str(v) for k, v in tiny_pipelines.items()})
    image, _ = disk_image(width=200, height=150)
    region = np.zeros((150, 200), bool)
    region[60:110, 120:180] = True
    task = {"id": 4, "data": {"image": data_uri(encode_image(image))}}
    new_tasks = generate_samples(task, generation(brush(region), engine=engine), CONFIG, get_settings())
    assert len(new_tasks) == 2
    for index, new in enumerate(new_tasks):
        meta = new["data"]["synthetic"]
        assert meta == {**meta, "source_task": 4, "engine": engine, "seed": index, "mode": "add",
                        "prompt": "yellow block of wood", "negative_prompt": "snow road"}
        name = new["data"]["image"].removeprefix("http://files.test/out/")
        painted = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / name)), cv2.COLOR_BGR2RGB)
        assert painted.shape == image.shape
        far = cv2.dilate(region.astype(np.uint8), np.ones((61, 61), np.uint8)) == 0
        assert np.array_equal(painted[far], image[far]) and not np.array_equal(painted[region], image[region])
        [prediction] = new["predictions"]
        [item] = prediction["result"]
        assert item["value"]["brushlabels"] == ["Vehicle"]
        mask = rle_to_mask(item["value"]["rle"], 150, 200)
        assert mask.any() and not (mask & far).any()


def test_removal_imports_the_cleaned_image_without_the_label(tiny_pipelines, configure, tmp_path):
    configure(SAM_ENGINE="grabcut", OUTPUT_DIR=str(tmp_path / "out"), OUTPUT_URL="http://files.test/out",
              SYNTHESIS_STEPS="2", SYNTHESIS_SIZE="64", **{k: str(v) for k, v in tiny_pipelines.items()})
    image, _ = disk_image(width=200, height=150)
    task = {"id": 5, "data": {"image": data_uri(encode_image(image))}}
    [new] = generate_samples(task, generation(rect(), prompt="", samples=1, mode="remove"), CONFIG, get_settings())
    assert new["predictions"][0]["result"] == [] and new["data"]["synthetic"]["mode"] == "remove"


def test_submitting_a_generation_annotation_queues_a_job_and_does_not_train(configure, tmp_path):
    configure(SAM_ENGINE="grabcut")
    import _wsgi

    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 8, "label_config": CONFIG},
               "task": {"id": 2, "data": {"image": "http://x/y.png"}}, "annotation": generation(rect())}
    from backend.core.jobs import get_queue, reset_queue

    reset_queue()
    response = _wsgi.app.test_client().post("/webhook", json=payload)
    assert response.status_code == 201 and response.json["stored"] is False and response.json["job"]
    assert not (tmp_path / "models" / "projects" / "8" / "annotations").exists()
    with pytest.raises(InputError, match="LABEL_STUDIO_URL"):  # the job needs the API to read the task
        get_queue().wait(response.json["job"], timeout=60)
    assert get_queue().status(response.json["job"])["status"] == "failed"
    reset_queue()
