"""One model-version name everywhere: predictions, /setup, /versions and the resume of a bulk pre-labeling."""

from __future__ import annotations

from types import SimpleNamespace

from backend.core.settings import get_settings
from backend.core.versions import ModelVersions, model_version, project_model_version
from backend.prelabel import run as prelabel
from backend.segmentation.service import get_segmentation
from tests.helpers import LABEL_CONFIG, data_uri, disk_image, encode_image, keypoint, predict_body, sam_env

PROJECT = "6"


class FakeLabelStudio:
    """The two SDK calls `tasks_to_do` makes, over a fixed project (no server needed for naming logic)."""

    def __init__(self, predictions: list[tuple[int, str, list]], task_ids: list[int]):
        self.predictions = SimpleNamespace(list=lambda project: [
            SimpleNamespace(task=t, model_version=v, result=r) for t, v, r in predictions])
        self.tasks = SimpleNamespace(list=lambda **kwargs: [
            SimpleNamespace(id=i, data={"image": "x"}, meta={}, predictions=[]) for i in task_ids])


def activate_a_tuned_decoder(settings) -> str:
    decoder = get_segmentation().engine.get().model.mask_decoder
    versions = ModelVersions(settings.model_dir, PROJECT)
    version = versions.save(decoder.state_dict(), {"base": "base"}, activate=True)
    return version.name


def test_after_fine_tuning_every_place_names_the_same_version_and_a_rerun_resumes(configure, tiny_checkpoints,
                                                                                   monkeypatch):
    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]))
    import _wsgi

    settings = get_settings()
    base = model_version(settings)
    tuned = activate_a_tuned_decoder(settings)
    current = project_model_version(settings, PROJECT)
    assert current == f"{base}-{tuned}" == model_version(settings, tuned)

    client = _wsgi.app.test_client()
    assert client.post("/setup", json={"project": PROJECT, "schema": LABEL_CONFIG}).json["model_version"] == current
    assert client.get(f"/versions?project={PROJECT}").json["versions"] == [base, current]
    body = {**predict_body(data_uri(encode_image(disk_image()[0])), [keypoint(40, 50)]), "project": PROJECT}
    assert client.post("/predict", json=body).json["results"][0]["model_version"] == current

    # The resume compares against the project's current version: tasks pre-labeled by the tuned decoder
    # are done, an empty prediction is not.
    fake = FakeLabelStudio([(1, current, [{"type": "brushlabels"}]), (2, current, []), (3, base, [{"x": 1}])],
                           [1, 2, 3, 4])
    todo, done = prelabel.tasks_to_do(fake, int(PROJECT), current)
    assert done == [1] and todo == [2, 3, 4]

    seen = {}
    monkeypatch.setattr(prelabel, "run_project", lambda project, version, limit, progress: seen.update(
        version=version) or {"failed": 0})
    assert prelabel.main(["--project", PROJECT]) == 0
    assert seen["version"] == current  # the CLI's default is the project's current version, not the base


def test_grabcut_and_unknown_projects_use_the_base_name(configure):
    configure(SAM_ENGINE="grabcut")
    settings = get_settings()
    assert model_version(settings) == "grabcut" == project_model_version(settings, "3")
    assert project_model_version(settings, "") == "grabcut"
