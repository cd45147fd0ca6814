#!/usr/bin/env python3
"""Does this image see a GPU, and can PyTorch compute on it? For admins, on a new GPU node pool.

Run it where the kernels run, asking for one GPU (see docs/admin-guide.md, "Check a GPU node"):
it prints what PyTorch was built with and what it finds, multiplies two matrices on the GPU,
and exits non-zero, saying why, when CUDA is not usable: no GPU given to the container, a driver
too old for the CUDA libraries PyTorch brings, or a device the build does not support.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        import torch
    except ImportError as e:
        print(f"FAIL: PyTorch is not installed in this image: {e}")
        return 2
    print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
    if not torch.cuda.is_available():
        print("FAIL: torch.cuda.is_available() is False: the container got no GPU "
              "(resources.limits nvidia.com/gpu), or the node's driver is older than CUDA "
              f"{torch.version.cuda} needs (nvidia-smi on the node shows the CUDA version it "
              "serves)")
        return 1
    count = torch.cuda.device_count()
    for index in range(count):
        major, minor = torch.cuda.get_device_capability(index)
        print(f"GPU {index}: {torch.cuda.get_device_name(index)} (compute capability "
              f"{major}.{minor})")
    a = torch.randn(1024, 1024, device="cuda")
    product = (a @ a.T).trace().item()
    torch.cuda.synchronize()
    print(f"OK: a 1024x1024 matrix product ran on the GPU (trace {product:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
