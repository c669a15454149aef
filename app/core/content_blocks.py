"""Content blocks (CONTRACT 3c): the errors a blocked request ends with, and the blocked-terms
list checked against a request's prompt (never its negative prompt, which names what to avoid).

The file holds one term a line, matched as a whole word in any case; a line `re:<pattern>` is a
regular expression (searched, case-insensitive); a line whose first character is `#` is a comment,
as is the end of a term's line from ` #` on. A bad pattern is an error at load, naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROMPT_BLOCKED = "content blocked: the prompt contains a blocked term"
OUTPUT_FLAGGED = "content blocked: an output was flagged by the safety checker"
# A blocked request is the client's doing, like a bad field found late: 422, refunded.
BLOCKED_STATUS = 422


class BlockedTermsError(ValueError):
    """The blocked-terms file cannot be used (missing, unreadable, or a bad pattern)."""


@dataclass(frozen=True)
class BlockedTerms:
    pattern: re.Pattern[str] | None  # None: nothing is blocked

    def blocks(self, prompt: str) -> bool:
        return self.pattern is not None and self.pattern.search(prompt) is not None


def parse_blocked_terms(text: str, origin: str = "blocked terms") -> BlockedTerms:
    alternatives: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("re:"):
            expression = line[3:].strip()
            try:
                re.compile(expression)
            except re.error as exc:
                raise BlockedTermsError(
                    f"{origin}, line {number}: bad pattern {expression!r}: {exc}"
                ) from None
            alternatives.append(f"(?:{expression})")
            continue
        term = line.split(" #", 1)[0].strip()
        if term:
            # Whole words: a term is not found inside a longer word ("ass" in "class").
            alternatives.append(rf"(?<!\w){re.escape(term)}(?!\w)")
    if not alternatives:
        return BlockedTerms(None)
    return BlockedTerms(re.compile("|".join(alternatives), re.IGNORECASE))


def load_blocked_terms(path: str | None) -> BlockedTerms:
    """The terms of SDXL_BLOCKED_TERMS_FILE (nothing blocked when it is not set)."""
    if not path:
        return BlockedTerms(None)
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BlockedTermsError(f"SDXL_BLOCKED_TERMS_FILE={path!r} cannot be read: {exc}") from None
    return parse_blocked_terms(text, origin=f"SDXL_BLOCKED_TERMS_FILE {path!r}")
