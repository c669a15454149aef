"""Prompt embeddings for SDXL: long prompts and Automatic1111 weights, through both text encoders.

Users write weights the Automatic1111 way: `(word:1.3)`, `(word)` (x1.1), `[word]` (/1.1), nested
brackets multiply, `\\(` is a literal bracket. `parse_weighted` turns such a prompt into
(text, weight) fragments; compel then embeds the fragments with no 77-token cut (the prompt is split
into as many 77-token windows as it needs, each with its own start and end tokens) and applies the
weights. Fragments are handed to compel as objects, never re-written into compel's own syntax, so
no escaping can go wrong. Runs of equal weight are merged, so `(word:1.0)` yields exactly the
fragments of `word` and therefore the same embeddings, bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Conjunction, FlattenedPrompt

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
# Weights are kept in [0, MAX_WEIGHT] after every product (CONTRACT 3b): `(word:1e400)` (inf),
# thousands of nested brackets, or inf times 0, would otherwise give NaN embeddings and a black image.
MAX_WEIGHT = 10.0

# One token of the A1111 grammar: an escaped bracket or backslash, an opening bracket, an explicit
# weight closing a round bracket (`:1.3)`), a closing bracket, a run of plain text, a lone ':' or '\'.
_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]                                  # escaped bracket or backslash: literal
    | [(\[]                                       # opening bracket
    | :\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\)   # explicit weight, closes (
    | [)\]]                                       # closing bracket
    | [^\\()\[\]:]+                               # plain text
    | [:\\]                                       # a colon or backslash that is just text
    """,
    re.VERBOSE,
)


def parse_weighted(prompt: str) -> list[tuple[str, float]]:
    """Split an Automatic1111-style prompt into (text, weight) fragments, equal weights merged.

    Brackets that never close weigh everything after them (as in Automatic1111); a closing bracket
    with no opening one, and a `:1.3)` outside round brackets, are plain text.
    """
    parts: list[list] = []  # [text, weight], mutable while brackets close
    open_round: list[int] = []
    open_square: list[int] = []

    def weigh_from(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] = clamp_weight(part[1] * factor)

    for match in _TOKEN.finditer(prompt):
        token = match.group(0)
        weight = match.group("weight")
        if token.startswith("\\") and len(token) == 2:
            parts.append([token[1], 1.0])
        elif token == "(":
            open_round.append(len(parts))
        elif token == "[":
            open_square.append(len(parts))
        elif weight is not None and open_round:
            weigh_from(open_round.pop(), clamp_weight(float(weight)))
        elif token == ")" and open_round:
            weigh_from(open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            weigh_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            parts.append([token, 1.0])
    for start in open_round:
        weigh_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        weigh_from(start, SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for text, weight in parts:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def clamp_weight(weight: float) -> float:
    """In [0, MAX_WEIGHT]; NaN (never produced by clamped factors, but cheap to rule out) is 1.0."""
    if weight != weight:
        return 1.0
    return min(max(weight, 0.0), MAX_WEIGHT)


@dataclass(frozen=True)
class PromptEmbeddings:
    """What StableDiffusionXLImg2ImgPipeline takes instead of prompt strings (batch of one)."""

    embeds: torch.Tensor  # [1, tokens, 2048 for SDXL]: both encoders' penultimate states, concatenated
    pooled: torch.Tensor  # [1, 1280 for SDXL]: the second encoder's pooled projection
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.embeds.shape[1]


class PromptEncoder:
    """Embeds prompts for one SDXL pipeline (holds references to its tokenizers and text encoders)."""

    def __init__(self, pipe, device: torch.device | None = None) -> None:
        self._force_zeros_for_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", True))
        self._compels = [
            Compel(
                tokenizer=tokenizer,
                text_encoder=encoder,
                returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                truncate_long_prompts=False,
                requires_pooled=pooled,
                device=str(device) if device is not None else None,
            )
            for tokenizer, encoder, pooled in (
                (pipe.tokenizer, pipe.text_encoder, False),
                (pipe.tokenizer_2, pipe.text_encoder_2, True),
            )
        ]

    def encode(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        embeds, pooled = self._encode(prompt)
        if not negative_prompt and self._force_zeros_for_empty:
            # What diffusers does for SDXL base models with no negative prompt: zero conditioning.
            negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            negative_embeds, negative_pooled = self._encode(negative_prompt)
        embeds, negative_embeds = self._pad([embeds, negative_embeds])
        return PromptEmbeddings(embeds, pooled, negative_embeds, negative_pooled)

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        fragments = parse_weighted(text)
        prompt = Conjunction([FlattenedPrompt(fragments)])
        per_encoder = [
            compel.build_conditioning_tensor_for_conjunction(prompt)[0] for compel in self._compels
        ]
        # The two tokenizers could split a long prompt into a different number of windows.
        length = max(e.shape[1] for e in per_encoder)
        per_encoder = [self._pad_one(e, c, length) for e, c in zip(per_encoder, self._compels, strict=True)]
        # The pooled embedding sees the prompt without weight syntax, first window only (as in diffusers).
        plain = "".join(fragment for fragment, _ in fragments)
        pooled = self._compels[1].conditioning_provider.get_pooled_embeddings([plain])
        return torch.cat(per_encoder, dim=-1), pooled.to(per_encoder[1].dtype)

    def _pad(self, embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pad concatenated embeddings to one length with the embedding of an empty 77-token window."""
        length = max(e.shape[1] for e in embeddings)
        empty = torch.cat([c.conditioning_provider.empty_z for c in self._compels], dim=-1)
        return [_pad_with(e, empty, length) for e in embeddings]

    @staticmethod
    def _pad_one(embeds: torch.Tensor, compel: Compel, length: int) -> torch.Tensor:
        return _pad_with(embeds, compel.conditioning_provider.empty_z, length)


def _pad_with(embeds: torch.Tensor, empty_window: torch.Tensor, length: int) -> torch.Tensor:
    while embeds.shape[1] < length:
        embeds = torch.cat([embeds, empty_window.to(embeds.dtype).expand(embeds.shape[0], -1, -1)], dim=1)
    return embeds
