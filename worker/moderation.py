"""What a worker checks before it runs a request and before it stores its outputs (CONTRACT 3c):
the blocked terms against the prompt, the safety checker against every output. A request of a key
made `--unmoderated` skips both (its spec says so)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.content_blocks import BlockedTerms, load_blocked_terms
from app.core.job_spec import JobSpec
from app.core.settings import Settings


@dataclass
class Moderation:
    blocked_terms: BlockedTerms
    safety_checker: Any = None  # worker.safety.SafetyChecker, or None when SDXL_SAFETY_CHECKER=off

    def prompt_blocked(self, spec: JobSpec) -> bool:
        return spec.moderated and self.blocked_terms.blocks(spec.prompt)

    def outputs_flagged(self, spec: JobSpec, encoded_images: list[bytes]) -> bool:
        return (
            spec.moderated and self.safety_checker is not None and self.safety_checker.flags(encoded_images)
        )


def load_moderation(settings: Settings, device: str) -> Moderation:
    """At worker start: a bad terms file or a classifier that cannot load stops the worker, naming it."""
    checker = None
    if settings.safety_checker.strip().lower() != "off":
        from worker.safety import SafetyChecker

        checker = SafetyChecker(
            settings.safety_checker.strip(),
            settings.safety_label_list,
            settings.safety_threshold,
            device=device,
            cache_dir=None,
        )
    return Moderation(load_blocked_terms(settings.blocked_terms_file), checker)
