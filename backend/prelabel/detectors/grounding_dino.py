"""Grounding DINO: prompts as one "a. b. c." caption; it answers the matched phrase, mapped back to a prompt."""

from __future__ import annotations

import numpy as np

MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")


def inputs(processor, image: np.ndarray, prompts: list[str]):
    caption = " ".join(p.rstrip(".").lower() + "." for p in prompts)
    return processor(text=caption, images=image, return_tensors="pt", input_data_format="channels_last")


def boxes(processor, output, model_inputs, prompts: list[str], threshold: float, size: tuple[int, int]):
    found = processor.post_process_grounded_object_detection(
        output, model_inputs["input_ids"], threshold=threshold, text_threshold=threshold, target_sizes=[size])[0]
    phrases = found.get("text_labels") or found["labels"]
    return [(box, score, prompt_of(phrase, prompts))
            for box, score, phrase in zip(found["boxes"].tolist(), found["scores"].tolist(), phrases, strict=True)]


def prompt_of(phrase: str, prompts: list[str]) -> int | None:
    """The prompt a matched phrase comes from: the same words, else one containing the other."""
    text = phrase.strip().lower()
    for index, prompt in enumerate(prompts):
        if prompt.rstrip(".").lower() == text:
            return index
    for index, prompt in enumerate(prompts):
        if text and (text in prompt.lower() or prompt.lower() in text):
            return index
    return None
