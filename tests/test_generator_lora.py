"""Domain LoRA for the inpainting engines: trained on a project's kept annotations (a tiny synthetic domain: red
discs on one green texture), saved in diffusers' LoRA format as versions, activated only when held-out loss
improves, loaded back by synthesis, rolled back byte for byte, and named in each sample's provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.core.label_config import OutputControl
from backend.core.settings import get_settings
from backend.learning.annotations import AnnotationStore
from backend.segmentation.masks import mask_results
from backend.synthesis.generate import generate_samples
from backend.synthesis.generator_versions import WEIGHTS, GeneratorVersions
from backend.synthesis.inpainting import InpaintRequest, get_inpainter, use_generator
from backend.synthesis.lora import LoraTraining, train_generator
from tests.helpers import data_uri, disk_image, encode_image, save_tiny_inpainting
from tests.test_synthesis import CONFIG, brush, generation

PROJECT = 5
CONTROL = OutputControl("tag", "image", "BrushLabels", ("Disc",))


@pytest.fixture(scope="module")
def tiny_pipelines(tmp_path_factory):
    return save_tiny_inpainting(tmp_path_factory.mktemp("inpainting-lora"))


@pytest.fixture
def domain(configure, tiny_pipelines, tmp_path):
    """Ten kept annotations of one red disc each on the same green texture, and the settings to train on them."""
    configure(SAM_ENGINE="grabcut", OUTPUT_DIR=str(tmp_path / "out"), OUTPUT_URL="http://files.test/out",
              SYNTHESIS_STEPS="2", SYNTHESIS_SIZE="32", GENERATOR_TRAIN_SIZE="32", GENERATOR_TRAIN_STEPS="60",
              GENERATOR_LEARNING_RATE="0.003", GENERATOR_PROMPT_TEMPLATE="a photo of a {label}",
              **{k: str(v) for k, v in tiny_pipelines.items()})
    store = AnnotationStore(get_settings().model_dir)
    rng = np.random.default_rng(0)
    for index in range(10):
        center = tuple(rng.uniform(0.35, 0.65, 2))
        image, mask = disk_image(64, 64, center=center, radius=0.2, seed=0)
        task = {"id": 100 + index, "data": {"image": data_uri(encode_image(image))}}
        store.save(str(PROJECT), task, {"id": 200 + index, "result": mask_results(mask, 1.0, CONTROL, "Disc")})
    return get_settings()


def sample(engine: str, settings, seed: int = 3) -> bytes:
    """One generated crop with the project's active generator (or the base), as bytes."""
    inpainter = get_inpainter(engine, settings)
    image, mask = disk_image(32, 32, center=(0.5, 0.5), radius=0.2, seed=1)
    from PIL import Image

    with inpainter.lock:
        use_generator(inpainter, PROJECT, settings)
        out = inpainter(Image.fromarray(image), Image.fromarray(mask.astype(np.uint8) * 255),
                        InpaintRequest("a photo of a Disc", "", seed, 2, 4.0, 32))
    return np.asarray(out).tobytes()


@pytest.mark.parametrize("engine", ["sd2", "kandinsky"])
def test_training_lowers_heldout_loss_and_the_active_lora_changes_synthesis_until_rolled_back(engine, domain):
    base = sample(engine, domain)
    report = train_generator(PROJECT, engine, domain)
    assert report["train_pairs"] == 8 and report["heldout_pairs"] == 2 and report["version"] == "v1"
    assert report["heldout_loss_after"] < report["heldout_loss_before"], report
    unet = get_inpainter(engine, domain).unet  # only the LoRA learned (peft freezes the base): no base gradient
    assert all(p.grad is None and not p.requires_grad for p in unet.parameters())
    versions = GeneratorVersions(domain.model_dir, PROJECT, engine)
    assert versions.active().name == "v1" and (versions.get("v1").folder / WEIGHTS).is_file()
    meta = versions.get("v1").meta
    assert meta["activated"] and meta["rank"] == 4 and meta["prompt_template"] == "a photo of a {label}"

    tuned = sample(engine, domain)
    assert tuned != base  # the project's LoRA is loaded for its samples
    assert sample(engine, domain) == tuned  # and is deterministic for a seed
    versions.activate(None)  # --activate base
    assert sample(engine, domain) == base  # byte for byte
    versions.activate("v1")
    assert sample(engine, domain) == tuned


def test_the_saved_lora_is_diffusers_format_and_loads_with_load_lora_weights(domain, tiny_pipelines):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    train_generator(PROJECT, "sd2", domain)
    folder = GeneratorVersions(domain.model_dir, PROJECT, "sd2").get("v1").folder
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_pipelines["SD_INPAINT_MODEL"])
    pipe.set_progress_bar_config(disable=True)
    image, mask = disk_image(32, 32, seed=1)

    def run() -> np.ndarray:
        return np.asarray(pipe("a photo of a Disc", image=Image.fromarray(image), height=32, width=32,
                               mask_image=Image.fromarray(mask.astype(np.uint8) * 255), num_inference_steps=2,
                               generator=torch.Generator("cpu").manual_seed(0)).images[0])

    before = run()
    pipe.load_lora_weights(folder)  # the plain diffusers call, no code of ours
    assert not np.array_equal(run(), before)


def test_a_lora_that_does_not_improve_is_kept_but_not_activated(domain):
    report = train_generator(PROJECT, "sd2", domain, LoraTraining(rank=4, steps=5, learning_rate=0.0, size=32))
    versions = GeneratorVersions(domain.model_dir, PROJECT, "sd2")
    assert report["heldout_loss_after"] == report["heldout_loss_before"] and not report["activated"]
    assert [v.name for v in versions.list()] == ["v1"] and versions.active() is None


def test_a_generation_records_the_generator_version(domain):
    train_generator(PROJECT, "kandinsky", domain)
    image, _ = disk_image(width=96, height=64)
    region = np.zeros((64, 96), bool)
    region[20:44, 30:60] = True
    task = {"id": 4, "data": {"image": data_uri(encode_image(image))}}
    [new] = generate_samples(task, generation(brush(region), samples=1, engine="kandinsky"), CONFIG, domain,
                             project_id=PROJECT)
    assert new["data"]["synthetic"]["generator"] == "v1"
    GeneratorVersions(domain.model_dir, PROJECT, "kandinsky").activate(None)
    [new] = generate_samples(task, generation(brush(region), samples=1, engine="kandinsky"), CONFIG, domain,
                             project_id=PROJECT)
    assert new["data"]["synthetic"]["generator"] == "base"


def test_the_command_and_the_route_train_list_and_roll_back(domain, capsys):
    from backend.synthesis.lora import main

    assert main(["--project", str(PROJECT), "--engine", "sd2", "--steps", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == "v1"
    assert main(["--project", str(PROJECT), "--engine", "sd2", "--activate", "base"]) == 0
    capsys.readouterr()
    assert main(["--project", str(PROJECT), "--engine", "sd2", "--list"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"] == "base" and [v["version"] for v in listing["versions"]] == ["v1"]

    import _wsgi

    client = _wsgi.app.test_client()
    response = client.post("/train-generator", json={"project": PROJECT, "engine": "sd2"})
    assert response.status_code == 202, response.json
    [job] = response.json["jobs"]
    for _ in range(600):
        status = client.get(f"/jobs/{job}").json
        if status["status"] in ("finished", "failed"):
            break
        __import__("time").sleep(0.1)
    assert status["status"] == "finished", status
    assert status["result"]["version"] == "v2"
    bad = client.post("/train-generator", json={"project": PROJECT, "engine": "dalle"})
    assert bad.status_code == 400 and "engine" in bad.json["error"]
    few = client.post("/train-generator", json={"project": 99, "engine": "sd2"})
    assert few.status_code == 202  # queued; the job then fails with the reason
