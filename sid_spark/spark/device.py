"""Which torch device a task computes on: the GPU Spark assigned to this task, else the CPU."""
from __future__ import annotations

import torch


def task_device(preference: str = "auto") -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device(f"cuda:{_assigned_gpu()}")
    if preference == "cuda":
        raise RuntimeError("device=cuda but torch sees no CUDA device on this executor")
    return torch.device("cpu")


def _assigned_gpu() -> int:
    """The GPU address from TaskContext.resources() (Spark GPU scheduling), 0 outside a task or without one."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            gpus = ctx.resources().get("gpu")
            if gpus is not None and gpus.addresses:
                return int(gpus.addresses[0]) % max(torch.cuda.device_count(), 1)
    except Exception:  # no task context (driver-side use): the first visible device
        pass
    return 0


def configure_torch_for_task(threads: int = 1) -> None:
    """One Spark task per core: torch must not spawn a thread per core inside every task."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
