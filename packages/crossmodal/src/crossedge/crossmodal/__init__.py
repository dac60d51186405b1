"""crossedge-crossmodal: cross-subject brain decoding, contrastive alignment, fusion, Zipper, attention audits.

See docs/crossmodal.md.
"""
