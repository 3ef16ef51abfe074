"""Code generators from `tile` kernels (Triton, CUDA C++). Imports `tilefuse.ir` only."""
