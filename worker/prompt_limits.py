"""The CLIP-token cap on prompts (CONTRACT 3b: SDXL_MAX_PROMPT_TOKENS for the prompt and for the
negative prompt each).

Counted as worker/prompts.py windows them: the weight syntax is parsed first, each fragment is
tokenized on its own (as compel does) without start and end tokens, and the prompt's start and end
tokens are added once, so a plain prompt counts exactly `len(tokenizer(prompt).input_ids)`. SDXL's
two tokenizers share one vocabulary, but the larger count is taken in case a model's do not. Only
the tokenizers run (a few tens of milliseconds for 10,000 characters), never a text encoder, so an
over-long prompt is refused for almost nothing. The parts weighted under 1 are capped too, since
each one costs another pass of the text encoders over the whole prompt.
"""

from __future__ import annotations

from typing import Any

from app.core.job_spec import JobSpec
from worker.errors import PromptTooLong, TooManyDownweightedParts
from worker.prompts import parse_weighted

START_AND_END = 2
# compel embeds the whole prompt once more for each part weighted under 1 (`[word]`, `(word:0.5)`),
# without that part, to lerp away from it: 499 such parts in 1,000 tokens took 60 s on tiny against
# 0.32 s for the same tokens unweighted. Equal weights next to each other are one part.
MAX_DOWNWEIGHTED_PARTS = 32


def clip_token_count(tokenizer: Any, prompt: str) -> int:
    return _token_count(tokenizer, parse_weighted(prompt))


def _token_count(tokenizer: Any, fragments: list[tuple[str, float]]) -> int:
    texts = [text for text, _ in fragments]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, padding="do_not_pad")["input_ids"]
    return sum(len(fragment_ids) for fragment_ids in ids) + START_AND_END


def check_prompt_tokens(pipe: Any, spec: JobSpec, limit: int) -> None:
    """Raises PromptTooLong naming the first of prompt and negative_prompt over `limit` tokens, or
    TooManyDownweightedParts for one with more than MAX_DOWNWEIGHTED_PARTS."""
    tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
    for field, text in (("prompt", spec.prompt), ("negative_prompt", spec.negative_prompt)):
        if not text:
            continue
        fragments = parse_weighted(text)
        tokens = max(_token_count(tokenizer, fragments) for tokenizer in tokenizers)
        if tokens > limit:
            raise PromptTooLong(field, tokens, limit)
        downweighted = sum(1 for _, weight in fragments if weight < 1)
        if downweighted > MAX_DOWNWEIGHTED_PARTS:
            raise TooManyDownweightedParts(field, downweighted, MAX_DOWNWEIGHTED_PARTS)
