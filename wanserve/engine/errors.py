"""What can go wrong inside a generation, as the user should read it."""

from __future__ import annotations


class GenerationError(RuntimeError):
    """A run failed; `code` is stable for clients, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GenerationCancelled(Exception):
    """The step callback asked to stop; the caller knows why (cancel or deadline)."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"stopped at step {step} of {total}")
        self.step = step
        self.total = total


OUT_OF_MEMORY_HINT = (
    "the device ran out of memory. Lower the size or num_frames, or enable memory savers: "
    "T5_CPU=true, VAE_TILING=true, DIT_FSDP=true (several devices), CPU_OFFLOAD=model, "
    "or a larger ULYSSES_SIZE"
)
