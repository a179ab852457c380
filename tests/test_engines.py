import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.core.errors import ModelUnavailableError
from backend.core.settings import Settings
from backend.segmentation import compat
from backend.segmentation.grabcut import GrabCutSegmenter
from backend.segmentation.prompts import Prompt
from backend.segmentation.registry import SegmenterHolder, load_sam, load_segmenter
from tests.helpers import TINY_ARCH, disk_image, iou, save_tiny_sam

compat.install()
from segment_anything import SamPredictor  # noqa: E402


def tiny_settings(engine, checkpoint, **extra):
    extra.setdefault("model_dir", str(Path(checkpoint).parent / "models"))  # ONNX exports land there
    return Settings(sam_engine=engine, sam_checkpoint=str(checkpoint), sam_download=False,
                    sam_arch_overrides=json.dumps(TINY_ARCH[engine]), **extra)


@pytest.mark.parametrize("engine", ["vit_b", "vit_t"])
def test_official_checkpoint_round_trip(engine, tiny_checkpoints):
    model = load_sam(tiny_settings(engine, tiny_checkpoints[engine]))
    saved = torch.load(tiny_checkpoints[engine], weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


@pytest.mark.parametrize("engine", ["vit_b", "vit_t"])
def test_decode_matches_official_sam_predictor(engine, tiny_checkpoints):
    """Our stateless engine gives exactly what segment_anything's SamPredictor gives (float32 embeddings, eager
    encoder: the runtimes have their own tests)."""
    segmenter = load_segmenter(tiny_settings(engine, tiny_checkpoints[engine], embedding_float16=False,
                                             encoder_runtime="torch"))
    image, _ = disk_image(300, 200)
    predictor = SamPredictor(segmenter.model)
    predictor.set_image(image)
    embedding = segmenter.embed(image)
    torch.testing.assert_close(torch.from_numpy(embedding.features), predictor.features, rtol=1e-4, atol=1e-5)

    click = Prompt(points=np.array([[120.0, 100.0]], np.float32), labels=np.array([1]))
    masks, scores, _ = predictor.predict(point_coords=click.points, point_labels=click.labels, multimask_output=True)
    ours = segmenter.decode(embedding, click)
    best = int(np.argmax(scores))
    assert ours.score == pytest.approx(float(scores[best]), abs=1e-5)
    assert iou(ours.mask, masks[best]) > 0.999

    box_and_clicks = Prompt(points=np.array([[120.0, 100.0], [10.0, 10.0]], np.float32), labels=np.array([1, 0]),
                            box=np.array([60, 40, 200, 160], np.float32))
    masks, scores, _ = predictor.predict(point_coords=box_and_clicks.points, point_labels=box_and_clicks.labels,
                                         box=box_and_clicks.box, multimask_output=False)
    ours = segmenter.decode(embedding, box_and_clicks)
    assert ours.score == pytest.approx(float(scores[0]), abs=1e-5)
    assert iou(ours.mask, masks[0]) > 0.999
    assert ours.mask.shape == (200, 300) and ours.low_res_logits.shape == (1, 256, 256)

    refine = Prompt(points=np.array([[120.0, 100.0], [150.0, 90.0]], np.float32), labels=np.array([1, 1]))
    masks, scores, _ = predictor.predict(point_coords=refine.points, point_labels=refine.labels,
                                         mask_input=ours.low_res_logits, multimask_output=False)
    refined = segmenter.decode(embedding, refine, mask_input=ours.low_res_logits)
    assert refined.score == pytest.approx(float(scores[0]), abs=1e-5)
    assert iou(refined.mask, masks[0]) > 0.999


@pytest.mark.parametrize("engine", ["vit_b", "vit_t"])
def test_fast_decoder_equals_official_mask_decoder_logits(engine, tiny_checkpoints):
    """FastMaskDecoder is the official MaskDecoder reorganised: same logits, same scores."""
    segmenter = load_segmenter(tiny_settings(engine, tiny_checkpoints[engine], embedding_float16=False))
    model = segmenter.model
    embedding = segmenter.embed(disk_image(256, 256)[0])
    features = torch.from_numpy(embedding.features)
    context = segmenter.fast.image_context(features)
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for clicks in (1, 2, 5):
            prompt = Prompt(points=rng.uniform(0, 255, (clicks, 2)).astype(np.float32),
                            labels=np.array([1] + [int(v) for v in rng.integers(0, 2, clicks - 1)]),
                            box=np.array([20, 30, 200, 220], np.float32) if clicks == 2 else None)
            points, boxes = segmenter.prompt_tensors(embedding, prompt)
            sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
            multimask = prompt.is_single_click
            low_res, scores = model.mask_decoder(
                image_embeddings=features, image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            )
            best = int(torch.argmax(scores[0]))
            fast_logits, fast_score = segmenter.fast.decode(context, sparse, multimask)
            torch.testing.assert_close(fast_logits, low_res[:, best : best + 1], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(fast_score, scores[0, best : best + 1], rtol=1e-4, atol=1e-6)


def test_float16_embeddings_take_half_the_memory_and_give_the_same_masks(tiny_checkpoints):
    exact = load_segmenter(tiny_settings("vit_t", tiny_checkpoints["vit_t"], embedding_float16=False))
    half = load_segmenter(tiny_settings("vit_t", tiny_checkpoints["vit_t"]))  # the default
    image, _ = disk_image(300, 200)
    full_embedding, half_embedding = exact.embed(image), half.embed(image)
    assert half_embedding.features.dtype == np.float16
    assert half_embedding.nbytes * 2 == full_embedding.nbytes
    rng = np.random.default_rng(0)
    for point in rng.uniform((0, 0), (300, 200), (10, 2)):
        click = Prompt(points=point[None].astype(np.float32), labels=np.array([1]))
        a, b = exact.decode(full_embedding, click), half.decode(half_embedding, click)
        assert iou(a.mask, b.mask) > 0.99 and b.score == pytest.approx(a.score, abs=1e-2)


def test_checkpoint_of_another_architecture_is_named(tiny_checkpoints):
    with pytest.raises(ModelUnavailableError, match="does not fit SAM_ENGINE=vit_b.*(Missing key|size mismatch)"):
        load_sam(tiny_settings("vit_b", tiny_checkpoints["vit_t"]))


def test_missing_checkpoint_names_setting_and_url(tmp_path):
    settings = Settings(sam_engine="vit_b", model_dir=str(tmp_path), sam_download=False)
    with pytest.raises(ModelUnavailableError) as info:
        load_sam(settings)
    text = str(info.value)
    assert "SAM_CHECKPOINT" in text and "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in text
    assert str(tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth") in text


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match="not a readable PyTorch checkpoint"):
        load_sam(Settings(sam_engine="vit_t", sam_checkpoint=str(path), sam_download=False))


def test_download_to_cache_dir_where_network_allows(tmp_path, tiny_checkpoints, file_server):
    url = file_server.serve("/weights/mobile_sam.pt", tiny_checkpoints["vit_t"].read_bytes())
    settings = Settings(sam_engine="vit_t", model_dir=str(tmp_path), sam_checkpoint_url=url,
                        sam_arch_overrides=json.dumps(TINY_ARCH["vit_t"]))
    load_sam(settings)
    assert (tmp_path / "checkpoints" / "mobile_sam.pt").read_bytes() == tiny_checkpoints["vit_t"].read_bytes()
    assert not list((tmp_path / "checkpoints").glob("*.part"))


def test_failed_download_is_clear(tmp_path, file_server):
    settings = Settings(sam_engine="vit_t", model_dir=str(tmp_path), sam_checkpoint_url=file_server.url + "/none.pt")
    with pytest.raises(ModelUnavailableError, match="Download failed: 404"):
        load_sam(settings)
    assert not (tmp_path / "checkpoints" / "none.pt").exists()


def test_holder_reports_problem_then_loads(tmp_path, tiny_checkpoints):
    holder = SegmenterHolder(Settings(sam_engine="vit_t", sam_checkpoint=str(tmp_path / "x.pt"), sam_download=False))
    assert holder.status()["loaded"] is False and "not found" in holder.status()["problem"]
    with pytest.raises(ModelUnavailableError):
        holder.get()
    holder = SegmenterHolder(tiny_settings("vit_t", tiny_checkpoints["vit_t"]))
    assert holder.get() is holder.get()
    assert holder.status()["loaded"] is True


def test_fingerprint_follows_the_encoder_weights(tmp_path, tiny_checkpoints):
    other = save_tiny_sam("vit_t", tmp_path / "other.pth", seed=1)
    a = load_segmenter(tiny_settings("vit_t", tiny_checkpoints["vit_t"]))
    b = load_segmenter(tiny_settings("vit_t", tiny_checkpoints["vit_t"]))
    c = load_segmenter(tiny_settings("vit_t", other))
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize("prompt", [
    Prompt(points=np.array([[128.0, 120.0]], np.float32), labels=np.array([1])),
    Prompt(box=np.array([60, 50, 200, 190], np.float32)),
    Prompt(points=np.array([[128.0, 120.0], [300.0, 20.0]], np.float32), labels=np.array([1, 0]),
           box=np.array([60, 50, 200, 190], np.float32)),
])
def test_grabcut_covers_the_object(prompt):
    image, truth = disk_image(320, 240)
    segmenter = GrabCutSegmenter()
    result = segmenter.decode(segmenter.embed(image), prompt)
    assert result.mask.shape == truth.shape
    assert iou(result.mask, truth) > 0.9


def test_grabcut_works_on_large_images_at_reduced_size():
    image, truth = disk_image(1600, 1200)
    segmenter = GrabCutSegmenter(max_side=512)
    embedding = segmenter.embed(image)
    assert max(embedding.input_size) == 512 and embedding.original_size == (1200, 1600)
    result = segmenter.decode(embedding, Prompt(points=np.array([[640.0, 600.0]], np.float32), labels=np.array([1])))
    assert result.mask.shape == (1200, 1600) and iou(result.mask, truth) > 0.9


def test_grabcut_score_says_how_well_the_object_stands_out():
    """The documented heuristic (boundary contrast): high for a clean object mask, low for a cut through
    one uniform region, 0 for nothing."""
    from backend.segmentation.grabcut import GrabCutSegmenter, boundary_contrast
    from backend.segmentation.prompts import Prompt
    from tests.helpers import disk_image

    image, truth = disk_image(320, 240)
    segmenter = GrabCutSegmenter()
    result = segmenter.decode(segmenter.embed(image), Prompt(box=np.array([40, 30, 240, 210], np.float32)))
    assert result.score > 0.9 and iou(result.mask, truth) > 0.9
    noise = np.random.default_rng(1).normal(120, 10, (240, 320, 3)).clip(0, 255).astype(np.uint8)
    half = np.zeros((240, 320), bool)
    half[:, :160] = True
    assert boundary_contrast(noise, half) < 0.3
    assert boundary_contrast(image, np.zeros((240, 320), bool)) == 0.0


def test_a_download_that_does_not_match_the_official_hash_is_refused_and_leaves_nothing(tmp_path, file_server):
    """Official SAM names carry their MD5's first hex digits; a cut or foreign file never takes the name."""
    url = file_server.serve("/segment_anything/sam_vit_b_01ec64.pth", b"not the real checkpoint")
    settings = Settings(sam_engine="vit_b", model_dir=str(tmp_path), sam_checkpoint_url=url)
    with pytest.raises(ModelUnavailableError, match="MD5 .* is not the expected 01ec64d29a2fca3f0661936605ae66f8"):
        load_sam(settings)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no file, no .part


def test_a_download_with_a_hash_in_its_name_is_checked(tmp_path, file_server, tiny_checkpoints):
    import hashlib

    body = tiny_checkpoints["vit_t"].read_bytes()
    good = hashlib.md5(body).hexdigest()[:6]
    for name, ok in ((f"custom_{good}.pth", True), ("custom_abcdef.pth", False)):
        url = file_server.serve(f"/w/{name}", body)
        settings = Settings(sam_engine="vit_t", model_dir=str(tmp_path / name), sam_checkpoint_url=url,
                            sam_arch_overrides=json.dumps(TINY_ARCH["vit_t"]))
        if ok:
            load_sam(settings)
        else:
            with pytest.raises(ModelUnavailableError, match="not the expected abcdef"):
                load_sam(settings)
        assert [p.name for p in (tmp_path / name / "checkpoints").iterdir()] == ([name] if ok else [])


def test_the_engine_table_says_what_each_engine_can_do(tmp_path):
    from backend.core.errors import ModelUnavailableError
    from backend.segmentation.registry import (
        CONCEPTS,
        ENGINES,
        EVERYTHING,
        NO_WEIGHTS,
        TRAINABLE_DECODER,
        engine_spec,
    )

    assert set(ENGINES) == {"vit_h", "vit_l", "vit_b", "vit_t", "sam2", "sam_hq", "sam3", "grabcut"}
    assert [name for name, spec in ENGINES.items() if spec.can(CONCEPTS)] == ["sam3"]
    assert all(ENGINES[name].can(TRAINABLE_DECODER) and ENGINES[name].can(EVERYTHING)
               for name in ("vit_b", "vit_t", "sam2", "sam_hq"))
    assert not ENGINES["grabcut"].can(TRAINABLE_DECODER) and ENGINES["grabcut"].weights == NO_WEIGHTS
    with pytest.raises(ModelUnavailableError, match="unknown SAM_ENGINE 'sam9'.*vit_t.*grabcut"):
        engine_spec("sam9")
    assert load_segmenter(Settings(sam_engine="grabcut", model_dir=str(tmp_path))).name == "grabcut"
    holder = SegmenterHolder(Settings(sam_engine="sam9", model_dir=str(tmp_path)))
    assert "unknown SAM_ENGINE 'sam9'" in holder.status()["problem"]  # before any load, not "checkpoint missing"
    with pytest.raises(ModelUnavailableError, match="unknown SAM_ENGINE"):
        holder.get()
    assert "unknown SAM_ENGINE" in holder.status()["problem"]


def test_per_image_memo_makes_once_per_image_and_forgets_the_oldest():
    from backend.segmentation.segmenter import Embedding, PerImageMemo

    memo, made = PerImageMemo(kept=2), []

    def make(embedding):
        made.append(embedding)
        return len(made)

    images = [Embedding(np.zeros((1, 4), np.float16), (2, 2), (2, 2)) for _ in range(3)]
    assert memo.get(images[0], make) == 1 and memo.get(images[0], make) == 1  # a burst of clicks: made once
    assert memo.get(images[1], make) == 2  # equal values, another image: made anew
    memo.get(images[2], make)  # the oldest (images[0]) goes
    assert memo.get(images[0], make) == 4 and len(made) == 4
