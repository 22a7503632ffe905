"""Masks from clicks, boxes or words (SAM, OWLv2), and their clean-up, statistics and preview.

prompts (what to segment, parsed and checked) -> loading (SAM, OWLv2) -> sam, owl (the masks) -> make (the one
entry point: make_masks, with the clean-up of refine); morphology, stats and preview work on any masks.
"""
