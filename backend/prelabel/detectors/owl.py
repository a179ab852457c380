"""OWL-ViT: prompts as a list of queries, all in one forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MODEL_TYPES = ("owlvit",)


def inputs(processor, image: np.ndarray, prompts: list[str]):
    return processor(text=[prompts], images=image, return_tensors="pt", padding="max_length", truncation=True,
                     input_data_format="channels_last")


def boxes(processor, output, model_inputs, prompts: list[str], threshold: float, size: tuple[int, int]):
    found = processor.post_process_grounded_object_detection(
        output, threshold=threshold, target_sizes=[size], text_labels=[prompts])[0]
    return list(zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True))


class _VisionOutputs(torch.nn.Module):
    """What the ONNX export of an OWL vision tower computes: its last hidden state and pooled output."""

    def __init__(self, vision: torch.nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.vision(pixel_values=pixels)
        return output.last_hidden_state, output.pooler_output


AUTO_RUNTIMES = ("onnx",)


def accelerate(model, runtime: str, folder: Path, device) -> str:
    """Run the vision tower (almost all of a detection's cost) through ENCODER_RUNTIME; the text tower and the box /
    class heads stay in PyTorch. `auto` means ONNX Runtime (float32: the detections equal eager's). Returns the
    runtime in use."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from backend.segmentation.encoder_runtime import ExportShape, choose_encoder
    from backend.segmentation.sam import weights_fingerprint

    vision = model.base_model.vision_model
    size = int(model.config.vision_config.image_size)
    shape = ExportShape((1, 3, size, size), ("last_hidden_state", "pooler_output"))
    fingerprint = f"{model.config.model_type}-vision-{weights_fingerprint(vision)}"
    runner = choose_encoder(_VisionOutputs(vision), fingerprint, runtime, folder, device, shape, AUTO_RUNTIMES)
    if isinstance(runner, torch.nn.Module):
        return "torch"
    eager = vision.forward

    def forward(pixel_values=None, output_attentions=None, output_hidden_states=None, interpolate_pos_encoding=False,
                return_dict=None, **kwargs):
        if output_attentions or output_hidden_states or interpolate_pos_encoding or \
                tuple(pixel_values.shape) != shape.input:  # what the export does not cover
            return eager(pixel_values=pixel_values, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_dict=return_dict, **kwargs)
        hidden, pooled = runner(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    vision.forward = forward
    return runner.runtime
