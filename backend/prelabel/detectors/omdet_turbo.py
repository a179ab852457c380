"""OmDet-Turbo: class prompts plus a task sentence ("Detect a, b."), a timm Swin backbone at 640 px.

The processor is taken from its module (transformers' top-level name is a placeholder without torchvision, which
its post-processing uses only for NMS: the shim's `batched_nms` stands in); the Swin backbone needs timm.
"""

from __future__ import annotations

import numpy as np

MODEL_TYPES = ("omdet-turbo",)
NMS_THRESHOLD = 0.5  # the processor's default


def load(path: str):
    import importlib

    from transformers import OmDetTurboForObjectDetection

    from backend.segmentation.compat import provide_timm, provide_torchvision_ops

    # the module itself: the lazy `transformers.models.omdet_turbo` refuses it by name without torchvision
    processing_omdet_turbo = importlib.import_module("transformers.models.omdet_turbo.processing_omdet_turbo")
    provide_timm()
    provide_torchvision_ops(processing_omdet_turbo, "batched_nms")
    processor = processing_omdet_turbo.OmDetTurboProcessor.from_pretrained(path)
    return processor, OmDetTurboForObjectDetection.from_pretrained(path).eval()


def inputs(processor, image: np.ndarray, prompts: list[str]):
    return processor(images=image, text=prompts, return_tensors="pt", input_data_format="channels_last")


def boxes(processor, output, model_inputs, prompts: list[str], threshold: float, size: tuple[int, int]):
    found = processor.post_process_grounded_object_detection(
        output, text_labels=[prompts], threshold=threshold, nms_threshold=NMS_THRESHOLD, target_sizes=[size])[0]
    return list(zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True))
