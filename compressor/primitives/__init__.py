"""Shared math, tensors in and results out: SVD and whitening (linalg), quantization grids
(grids), bit packing (packing), pruning masks (masks), sparse coding (sparse_coding) and
rank allocation (allocation). Primitives raise plain exceptions (ValueError); the method and
CLI layers turn them into user errors."""
