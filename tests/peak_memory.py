"""Run one `speech-lpo` stage and print, last, one JSON line of its peak memory.

``python -m tests.peak_memory <stage> <options...>``: ``peak_rss_mib`` is the process's high-water
resident set (Linux VmHWM, imports included); ``peak_cuda_mib`` the most CUDA memory torch allocated,
where the stage used a GPU.
"""

import json
import sys


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM (not Linux?)")


def main() -> None:
    from speech_lpo.cli import main as cli

    cli(sys.argv[1:])
    figures = {"stage": sys.argv[1], "peak_rss_mib": round(peak_rss_mib(), 1)}
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_initialized():
            figures["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
