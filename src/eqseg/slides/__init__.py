"""Whole-slide images: pyramidal TIFF reading by region, tissue detection, a slide source for tiling, a slide builder."""
