"""The real Flask app, as Label Studio calls it."""

import base64

import numpy as np
import pytest

from backend.segmentation.masks import rle_to_mask
from tests.helpers import (
    LABEL_CONFIG,
    POLYGON_CONFIG,
    data_uri,
    disk_image,
    encode_image,
    free_port,
    iou,
    keypoint,
    predict_body,
    rectangle,
)

IMAGE, TRUTH = disk_image(320, 240)
IMAGE_URL = data_uri(encode_image(IMAGE))


def only_mask(response, height=240, width=320):
    assert response.status_code == 200, response.json
    body = response.json
    [prediction] = body["results"]
    [item] = prediction["result"]
    assert item["type"] == "brushlabels" and item["value"]["format"] == "rle"
    assert (item["original_width"], item["original_height"]) == (width, height)
    assert prediction["model_version"] == body["model_version"]
    assert isinstance(item["score"], float) and prediction["score"] == item["score"]
    return rle_to_mask(item["value"]["rle"], height, width), item


def test_health_says_what_is_missing(configure, tmp_path):
    configure(SAM_ENGINE="vit_b")
    import _wsgi

    client = _wsgi.app.test_client()
    response = client.get("/health")  # 503 with the reason: Label Studio's model card shows it on connect
    body = response.json
    assert response.status_code == 503 and body["status"] == "ERROR" and body["model_class"] == "SamBackend"
    assert "sam_vit_b_01ec64.pth" in body["error"] and "SAM_CHECKPOINT" in body["error"]
    assert body["engine"]["loaded"] is False and body["features"]["segmenter"] == body["error"]
    assert "MODEL_DIR/checkpoints/sam_vit_b_01ec64.pth" in body["error"]  # no server path
    assert str(tmp_path) not in response.get_data(as_text=True)
    response = client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50)]))
    assert response.status_code == 503
    assert "SAM_CHECKPOINT" in response.json["error"] and response.json["status"] == "ERROR"


def test_setup_returns_model_version(sam_client):
    response = sam_client.post("/setup", json={"project": "3.1700000000", "schema": LABEL_CONFIG,
                                               "hostname": "http://localhost:8080", "access_token": "x"})
    assert response.status_code == 200
    assert response.json["model_version"] == "vit_t-tiny_vit_t"


@pytest.mark.parametrize("items", [
    [keypoint(40, 50)],
    [keypoint(40, 50), keypoint(95, 5, positive=False)],
    [rectangle(10, 10, 60, 80)],
    [rectangle(10, 10, 60, 80), keypoint(40, 50), keypoint(2, 2, positive=False)],
])
def test_sam_prompts_give_a_brush_mask_of_image_size(sam_client, items):
    mask, item = only_mask(sam_client.post("/predict", json=predict_body(IMAGE_URL, items)))
    assert mask.shape == (240, 320)
    assert item["value"]["brushlabels"] == ["Disk"] and item["from_name"] == "tag" and item["to_name"] == "image"


def test_grabcut_mask_covers_the_clicked_object(grabcut_client):
    mask, _ = only_mask(grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50)])))
    assert iou(mask, TRUTH) > 0.9
    mask, _ = only_mask(grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [rectangle(15, 15, 50, 75)])))
    assert iou(mask, TRUTH) > 0.9


def test_label_of_the_prompt_labels_the_mask(grabcut_client):
    _, item = only_mask(grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50, "Background")])))
    assert item["value"]["brushlabels"] == ["Background"]


def test_polygon_config_gives_polygons(grabcut_client):
    body = predict_body(IMAGE_URL, [keypoint(40, 50)], config=POLYGON_CONFIG)
    response = grabcut_client.post("/predict", json=body)
    [item] = response.json["results"][0]["result"]
    assert item["type"] == "polygonlabels" and item["value"]["polygonlabels"] == ["Disk"]
    xs = np.array([p[0] for p in item["value"]["points"]]) * 320 / 100
    ys = np.array([p[1] for p in item["value"]["points"]]) * 240 / 100
    ys_truth, xs_truth = np.nonzero(TRUTH)
    assert abs(xs.min() - xs_truth.min()) < 4 and abs(xs.max() - xs_truth.max()) < 4
    assert abs(ys.min() - ys_truth.min()) < 4 and abs(ys.max() - ys_truth.max()) < 4


def test_no_context_without_detector_gives_no_prediction_and_logs_the_reason(sam_client, monkeypatch, tmp_path,
                                                                              caplog):
    monkeypatch.setenv("DETECTOR_MODEL", str(tmp_path / "missing-detector"))
    from backend.core.settings import get_settings

    get_settings.cache_clear()
    response = sam_client.post("/predict", json=predict_body(IMAGE_URL, None))
    assert response.status_code == 200
    assert response.json["results"] == [[]]  # no prediction for the task: Label Studio stores none, asks again
    assert "DETECTOR_MODEL" in caplog.text
    monkeypatch.setenv("PRELABEL_MODE", "off")
    get_settings.cache_clear()
    assert sam_client.post("/predict", json=predict_body(IMAGE_URL, None)).json["results"] == []


BROKEN = data_uri(b"\x89PNG\r\n\x1a\n broken")


@pytest.mark.parametrize("body, status, message, where", [
    (predict_body(IMAGE_URL, [{"type": "keypointlabels"}]), 400, "needs a 'value' object", "context.result[0]"),
    (predict_body(IMAGE_URL, [keypoint(40, 50, "Cat")]), 400, "unknown label 'Cat'", "context"),
    (predict_body(IMAGE_URL, [keypoint(140, 50)]), 400, "outside the image", "context.result[0]"),
    (predict_body(IMAGE_URL, [rectangle(50, 50, 60, 10)]), 400, "outside the image", "context.result[0]"),
    (predict_body("data:image/png;base64,", [keypoint(40, 50)]), 422, "0 bytes", "data:image/png;base64,"),
    (predict_body(BROKEN, [keypoint(40, 50)]), 422, "not a readable image", BROKEN),
    (predict_body(f"http://127.0.0.1:{free_port()}/a.png", [keypoint(40, 50)]), 403, "IMAGE_URL_HOSTS", "/a.png"),
    ({**predict_body(IMAGE_URL, [keypoint(40, 50)]), "tasks": [{"id": 9, "data": {"img": "x"}}]}, 400,
     "no field 'image'", "task 9"),
    ({**predict_body(IMAGE_URL, [keypoint(40, 50)]), "tasks": "nope"}, 400, "must be a list", "/predict"),
    ({**predict_body(IMAGE_URL, [keypoint(40, 50)]), "label_config": "<View/>"}, 400, "no <Image>", "label_config"),
])
def test_bad_input_is_a_clear_error_and_the_next_request_works(grabcut_client, body, status, message, where):
    response = grabcut_client.post("/predict", json=body)
    assert response.status_code == status, response.json
    assert response.json["status"] == "ERROR"
    assert message in response.json["error"]
    assert where in response.json["where"]
    mask, _ = only_mask(grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50)])))
    assert iou(mask, TRUTH) > 0.9


def test_body_that_is_not_json(grabcut_client):
    response = grabcut_client.post("/predict", data="{oops", content_type="application/json")
    assert response.status_code == 400 and "JSON object" in response.json["error"]


def test_unexpected_failure_is_500_json_and_logged(grabcut_client, monkeypatch, caplog):
    from backend.segmentation.service import get_segmentation

    def explode(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(get_segmentation(), "segment", explode)
    response = grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50)]))
    assert response.status_code == 500 and response.json["error"].startswith("internal error ZeroDivisionError")
    incident = response.json["error"].split("incident ")[1].split()[0]
    assert "boom" not in response.json["error"]  # details stay in the log, under the incident id
    assert f"incident {incident}" in caplog.text and "boom" in caplog.text


def test_webhook_reaches_fit_which_keeps_the_annotation(grabcut_client, tmp_path):
    from backend.learning.annotations import AnnotationStore

    result = [{"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2], "brushlabels": ["Disk"]}}]
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 4, "label_config": LABEL_CONFIG},
               "annotation": {"id": 17, "result": result}, "task": {"id": 1, "data": {"image": IMAGE_URL}}}
    response = grabcut_client.post("/webhook", json=payload)
    assert response.status_code == 201
    assert response.json == {"event": "ANNOTATION_CREATED", "annotation": 17, "stored": True}
    [kept] = AnnotationStore(tmp_path / "models").load("4")
    assert kept.result == result and kept.task["data"]["image"] == IMAGE_URL
    deleted = {"action": "ANNOTATIONS_DELETED", "project": payload["project"], "annotations": [{"id": 17}]}
    assert grabcut_client.post("/webhook", json=deleted).json["removed"] == [17]
    assert AnnotationStore(tmp_path / "models").load("4") == []
    cancelled = {**payload, "action": "ANNOTATION_CREATED", "annotation": {"id": 18, "was_cancelled": True}}
    assert grabcut_client.post("/webhook", json=cancelled).json["stored"] is False
    response = grabcut_client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 4}})
    assert response.status_code == 200 and response.json["status"] == "Unknown event"
    response = grabcut_client.post("/webhook", json={"action": "ANNOTATION_CREATED"})
    assert response.status_code == 400 and "project" in response.json["error"]
    broken = {**payload, "action": "ANNOTATION_CREATED", "task": None}
    response = grabcut_client.post("/webhook", json=broken)
    assert response.status_code == 400 and "task data" in response.json["error"]
    assert grabcut_client.get("/metrics").json["counts"]["fit_events"] == 4


def test_versions_and_metrics(grabcut_client):
    grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50)]))
    assert grabcut_client.get("/versions?project=1").json == {"versions": ["grabcut"], "model_version": "grabcut"}
    metrics = grabcut_client.get("/metrics").json
    assert metrics["counts"]["encoder_runs"] == 1 and metrics["counts"]["decoder_runs"] == 1
    assert metrics["cache"]["local"]["items"] == 1 and metrics["cache"]["files"] == 1  # memory + disk


def test_basic_auth(configure):
    configure(SAM_ENGINE="grabcut", BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw")
    import _wsgi

    client = _wsgi.app.test_client()
    assert client.get("/health").json == {"status": "UP", "model_class": "SamBackend"}  # probes: status only
    assert client.get("/metrics").status_code == 401
    assert client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50)])).status_code == 401
    wrong = base64.b64encode(b"ls:nope").decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"ls:pw").decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {right}"}).status_code == 200
    assert "engine" in client.get("/health", headers={"Authorization": f"Basic {right}"}).json  # details


def test_metrics_in_prometheus_text_format(grabcut_client):
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict:
        response = grabcut_client.get("/metrics", headers={"Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
        assert response.status_code == 200 and response.content_type.startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}

    before = samples()
    grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(40, 50)]))
    grabcut_client.post("/predict", json=predict_body(IMAGE_URL, [keypoint(140, 50)]))  # 400
    after = samples()

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("backend_requests_total", route="/predict", method="POST", status="200") == 1
    assert grew("backend_requests_total", route="/predict", method="POST", status="400") == 1
    assert grew("backend_request_errors_total", route="/predict", status="400") == 1
    assert grew("backend_request_duration_seconds_count", route="/predict") == 2
    assert after[("backend_events_total", (("event", "decoder_runs"),))] >= 1
    assert grabcut_client.get("/metrics?format=prometheus").content_type.startswith("text/plain")
    assert "counts" in grabcut_client.get("/metrics").json  # label-studio-ml's JSON stays the default


@pytest.mark.parametrize("extra, stored", [
    ("", {}),  # Label Studio's Connect Model form with the "Any extra params" field left empty
    ("{}", {}),  # ... with {} typed in it (the form sends the text)
    ('{"threshold": 0.4}', {"threshold": 0.4}),
    ({"threshold": 0.4}, {"threshold": 0.4}),  # the API's object
    (None, {}),
])
def test_setup_takes_extra_params_as_the_connect_form_sends_them(grabcut_client, extra, stored):
    from model import SamBackend

    body = {"project": "5.1700000000", "schema": LABEL_CONFIG, "extra_params": extra}
    response = grabcut_client.post("/setup", json=body)
    assert response.status_code == 200, response.json
    assert SamBackend(project_id="5").extra_params == stored


def test_setup_refuses_extra_params_that_are_no_object_and_says_so_in_the_status_line(grabcut_client):
    response = grabcut_client.post("/setup", json={"project": "5", "schema": LABEL_CONFIG, "extra_params": "[1, 2"})
    assert response.status_code == 400 and "must be a JSON object" in response.json["error"]
    # Label Studio shows requests' "400 Client Error: <reason> for url": the reason carries the message
    assert "extra_params" in response.status and "must be a JSON object" in response.status


def test_health_refuses_wrong_credentials_and_label_studio_without_them(configure):
    """Label Studio's Connect Model form says "authentication parameters ... incorrect" only for a 401 from
    /health; probes without credentials keep getting the status."""
    configure(SAM_ENGINE="grabcut", BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw")
    import _wsgi

    client = _wsgi.app.test_client()
    wrong = {"Authorization": f"Basic {base64.b64encode(b'ls:nope').decode()}"}
    assert client.get("/health", headers=wrong).status_code == 401
    assert client.get("/health", headers={"User-Agent": "heartex/1.23.2"}).status_code == 401
    assert client.get("/health", headers={"User-Agent": "kube-probe/1.31"}).json["status"] == "UP"
    right = {"Authorization": f"Basic {base64.b64encode(b'ls:pw').decode()}", "User-Agent": "heartex/1.23.2"}
    assert client.get("/health", headers=right).status_code == 200
