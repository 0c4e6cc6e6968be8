"""eqseg: equivariant vs. ordinary CNNs for segmentation of satellite scenes and pathology slides."""

__version__ = "0.1.0"
