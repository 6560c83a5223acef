"""Cross-field config checks for the ``site`` section (registered in bcr.config.TRACK_CHECKS)."""

from __future__ import annotations


def check(config: dict) -> list[tuple[str, str]]:
    """``site.reference_contexts`` pairs with ``prompts.contexts`` position by position."""
    ref = (config.get("site") or {}).get("reference_contexts")
    ours = config.get("prompts", {}).get("contexts", [])
    if ref is not None and len(ref) != len(ours):
        return [
            (
                "site.reference_contexts",
                f"has {len(ref)} entries but prompts.contexts has {len(ours)}: one note context per context",
            )
        ]
    return []
