"""Benchmarks against eager PyTorch, torch.compile, cuBLAS and SDPA (GPU only)."""
