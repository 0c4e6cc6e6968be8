"""Sliding-window prediction of whole scenes and slides, stitched with blending and written as it goes."""
