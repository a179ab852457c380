"""SAM's mask decoder reorganised for interactive clicks on a CPU: same weights, same maths, less work.

`MaskDecoder.predict_masks` recomputes, for every click, terms that depend only on the image, and runs
eager ops that copy the 64x64x256 image tokens several times. Here:
1. the image-side inputs of the first two-way block (image tokens + no-mask embedding, their key and
   value projections for token->image attention, their query projection for image->token attention)
   are computed once per image (`ImageContext`) and reused by every click on it;
2. attention runs through `scaled_dot_product_attention`;
3. both stride-2, kernel-2 transposed convolutions of the upscaler become matmuls over pixel rows (no
   overlap, so this is exact), and the pixel shuffle is done once on the final 256x256 logits;
4. only the chosen mask (best IoU score among the three for a single click) goes through the upscaler
   product.
A prompt with a mask input changes the image tokens, so it takes the official path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ImageContext:
    """Prompt-independent tensors of one image for the first two-way block."""

    src: torch.Tensor  # (1, HW, C) image tokens + no-mask embedding
    k_token_to_image: torch.Tensor  # (1, HW, C') first block, token->image attention keys
    v_token_to_image: torch.Tensor  # (1, HW, C') and values
    q_image_to_token: torch.Tensor  # (1, HW, C') first block, image->token attention queries
    grid: tuple[int, int]  # (h, w) of the image tokens

    @property
    def nbytes(self) -> int:
        tensors = (self.src, self.k_token_to_image, self.v_token_to_image, self.q_image_to_token)
        return sum(t.numel() * t.element_size() for t in tensors)


def _attend(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment_anything's Attention.forward after the input projections (q, k, v already projected)."""
    heads = module.num_heads

    def split(x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, heads, c // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    b, _, n, d = out.shape
    return module.out_proj(out.transpose(1, 2).reshape(b, n, heads * d))


class FastMaskDecoder:
    """Decodes one mask per prompt with a SAM model's prompt encoder and mask decoder weights."""

    def __init__(self, sam: nn.Module):
        self.prompt_encoder = sam.prompt_encoder
        self.decoder = sam.mask_decoder
        self.transformer = self.decoder.transformer
        pe = self.prompt_encoder.get_dense_pe()
        self.grid = (int(pe.shape[-2]), int(pe.shape[-1]))
        self.pos = pe.flatten(2).transpose(1, 2).contiguous()  # (1, HW, C)
        self.output_tokens = torch.cat([self.decoder.iou_token.weight, self.decoder.mask_tokens.weight], dim=0)[None]
        self._prepare_upscaler()

    def _prepare_upscaler(self) -> None:
        conv1, norm, _, conv2, _ = self.decoder.output_upscaling
        for conv in (conv1, conv2):
            if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2):
                raise ValueError("the fast decoder needs SAM's kernel-2, stride-2 upscaler")
        # ConvTranspose2d weight (Cin, Cout, 2, 2) -> (Cin, 4 * Cout), columns ordered (a, b, cout)
        self.w1 = conv1.weight.detach().permute(0, 2, 3, 1).reshape(conv1.in_channels, -1).contiguous()
        self.b1 = conv1.bias.detach()
        self.w2 = conv2.weight.detach().permute(0, 2, 3, 1).reshape(conv2.in_channels, -1).contiguous()
        self.b2 = conv2.bias.detach().repeat(4)
        self.norm = norm
        self.c1, self.c2 = conv1.out_channels, conv2.out_channels

    def image_context(self, features: torch.Tensor) -> ImageContext:
        """Per-image tensors from the image encoder's features (1, C, h, w)."""
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = (features + no_mask).flatten(2).transpose(1, 2).contiguous()
        first = self.transformer.layers[0]
        keys_with_pe = src + self.pos
        return ImageContext(
            src=src,
            k_token_to_image=first.cross_attn_token_to_image.k_proj(keys_with_pe),
            v_token_to_image=first.cross_attn_token_to_image.v_proj(src),
            q_image_to_token=first.cross_attn_image_to_token.q_proj(keys_with_pe),
            grid=(int(features.shape[-2]), int(features.shape[-1])),
        )

    def _block(self, layer, queries, keys, query_pe, context: ImageContext | None):
        """TwoWayAttentionBlock.forward; the first block takes its image-side projections from `context`."""
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)

        t2i = layer.cross_attn_token_to_image
        if context is not None:
            k_proj, v_proj = context.k_token_to_image, context.v_token_to_image
        else:
            keys_with_pe = keys + self.pos
            k_proj, v_proj = t2i.k_proj(keys_with_pe), t2i.v_proj(keys)
        queries = layer.norm2(queries + _attend(t2i, t2i.q_proj(queries + query_pe), k_proj, v_proj))
        queries = layer.norm3(queries + layer.mlp(queries))

        i2t = layer.cross_attn_image_to_token
        q_proj = context.q_image_to_token if context is not None else i2t.q_proj(keys_with_pe)
        tokens_with_pe = queries + query_pe
        keys = layer.norm4(keys + _attend(i2t, q_proj, i2t.k_proj(tokens_with_pe), i2t.v_proj(queries)))
        return queries, keys

    def _upscaled_logits(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """output_upscaling + hypernetwork product for one mask token: (1, 1, 4h, 4w) logits."""
        h, w = self.grid
        x = (keys[0] @ self.w1).view(-1, self.c1) + self.b1  # rows: (i, j, a, b)
        x = F.gelu(F.layer_norm(x, (self.c1,), self.norm.weight, self.norm.bias, self.norm.eps))
        x = F.gelu((x @ self.w2 + self.b2).view(-1, self.c2))  # rows: (i, j, a, b, c, d)
        logits = (x @ hyper).view(h, w, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5)
        return logits.reshape(1, 1, 4 * h, 4 * w)

    def decode(
        self, context: ImageContext, sparse: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (1, 1, 4h, 4w) of the chosen mask and its IoU score (1,)."""
        tokens = torch.cat((self.output_tokens, sparse), dim=1)
        queries, keys = tokens, context.src
        for index, layer in enumerate(self.transformer.layers):
            queries, keys = self._block(layer, queries, keys, tokens, context if index == 0 else None)
        final = self.transformer.final_attn_token_to_image
        attn = _attend(final, final.q_proj(queries + tokens), final.k_proj(keys + self.pos), final.v_proj(keys))
        queries = self.transformer.norm_final_attn(queries + attn)

        scores = self.decoder.iou_prediction_head(queries[:, 0, :])[0]
        index = 1 + int(torch.argmax(scores[1:])) if multimask else 0
        hyper = self.decoder.output_hypernetworks_mlps[index](queries[:, 1 + index, :])[0]
        return self._upscaled_logits(keys, hyper), scores[index : index + 1]
