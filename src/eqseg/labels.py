"""The label convention shared by every stage: class ids 0..K-1 and IGNORE = 255 for "no label" (padding, nodata,
unlabelled pixels of weak labels); losses and metrics skip it."""

IGNORE = 255
