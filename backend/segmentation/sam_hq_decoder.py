"""SAM-HQ's mask decoder with its prompt-independent part computed once per image.

transformers' `SamHQMaskDecoder.forward` recomputes the HQ features (the image embedding and the early ViT
features, each upscaled by two transposed convolutions) on every click, about two thirds of its time on a
CPU. `hq_features` computes them once per image; `decode` is the rest of that forward, line for line
(transformers 5.24), fed with them. Tested equal to the model's own forward to 1e-5."""

from __future__ import annotations

import torch


def hq_features(decoder, image_embeddings: torch.Tensor, vit_early: torch.Tensor) -> torch.Tensor:
    """The decoder's HQ feature map for one image (what does not depend on the prompt)."""
    vit_features = vit_early.permute(0, 3, 1, 2).contiguous()
    embed_encode = decoder.encoder_conv1(image_embeddings)
    embed_encode = decoder.encoder_conv2(decoder.activation(decoder.encoder_norm(embed_encode)))
    compressed = decoder.compress_vit_conv1(vit_features)
    compressed = decoder.compress_vit_conv2(decoder.activation(decoder.compress_vit_norm(compressed)))
    return embed_encode + compressed


def decode(decoder, hq: torch.Tensor, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
           sparse: torch.Tensor, dense: torch.Tensor, multimask: bool, hq_token_only: bool):
    """(masks 1xPxKxhxw, iou 1xPxK) as `SamHQMaskDecoder.forward` returns them, given `hq_features`."""
    batch_size, num_channels, height, width = image_embeddings.shape
    point_batch_size = sparse.shape[1]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, decoder.hq_token.weight], dim=0)
    output_tokens = output_tokens.repeat(batch_size, point_batch_size, 1, 1)
    point_embeddings = torch.cat([output_tokens, sparse], dim=2).to(decoder.iou_token.weight.dtype)
    image_embeddings = (image_embeddings + dense).repeat_interleave(point_batch_size, 0)
    image_pe = image_pe.repeat_interleave(point_batch_size, 0)
    point_embedding, _ = decoder.transformer(point_embeddings=point_embeddings, image_embeddings=image_embeddings,
                                             image_positional_embeddings=image_pe, attention_similarity=None,
                                             target_embedding=None)
    iou_token_out = point_embedding[:, :, 0, :]
    mask_tokens_out = point_embedding[:, :, 1:(1 + decoder.num_mask_tokens), :]
    image_embeddings = image_embeddings.transpose(2, 3).reshape(batch_size * point_batch_size, num_channels, height,
                                                                width)
    upscaled = decoder.upscale_conv1(image_embeddings)
    upscaled = decoder.activation(decoder.upscale_conv2(decoder.activation(decoder.upscale_layer_norm(upscaled))))
    upscaled_hq = decoder.mask_conv1(upscaled)
    upscaled_hq = decoder.mask_conv2(decoder.activation(decoder.mask_norm(upscaled_hq)))
    if hq.shape[0] == 1:
        hq = hq.repeat(batch_size * point_batch_size, 1, 1, 1)
    upscaled_hq = upscaled_hq + hq

    tokens = decoder.num_mask_tokens
    hyper_in = torch.stack([(decoder.output_hypernetworks_mlps[i] if i < tokens - 1 else decoder.hq_mask_mlp)(
        mask_tokens_out[:, :, i, :]) for i in range(tokens)], dim=2)
    _, channels, up_height, up_width = upscaled.shape
    upscaled = upscaled.reshape(batch_size, point_batch_size, channels, up_height * up_width)
    upscaled_hq = upscaled_hq.reshape(batch_size, point_batch_size, channels, up_height * up_width)
    masks_sam = (hyper_in[:, :, :tokens - 1] @ upscaled).reshape(batch_size, point_batch_size, -1, up_height,
                                                                 up_width)
    masks_hq = (hyper_in[:, :, tokens - 1:] @ upscaled_hq).reshape(batch_size, point_batch_size, -1, up_height,
                                                                   up_width)
    masks = torch.cat([masks_sam, masks_hq], dim=2)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    if multimask:
        iou_pred, order = torch.sort(iou_pred[:, :, 1:tokens - 1], dim=2, descending=True)
        masks_sam = torch.gather(masks[:, :, 1:tokens - 1], 2,
                                 order[..., None, None].expand(-1, -1, -1, masks.shape[3], masks.shape[4]))
    else:
        iou_pred = iou_pred[:, :, 0:1]
        masks_sam = masks[:, :, 0:1]
    masks_hq = masks[:, :, tokens - 1:tokens]
    return (masks_hq if hq_token_only else masks_sam + masks_hq), iou_pred
