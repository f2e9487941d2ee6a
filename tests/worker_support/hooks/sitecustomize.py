"""Test-only faults for worker processes, loaded through PYTHONPATH (never part of the package).

Markers in a task's prompt make the real engine misbehave in the real worker process:
  [oom]      torch.OutOfMemoryError inside the run (the engine's own OOM handling turns it into
             GenerationError('out_of_memory', ...), as a real one would be)
  [slow=S]   sleep S seconds before each denoising step's callback (a long task without burning CPU)
  [hang]     never return from denoising step 2 (a stuck step, for the watchdog)
The patch is applied when wanserve.engine.engine is first imported, so processes that never
import the engine (the supervisor, the test itself) are untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import re
import sys
import time

_SLOW = re.compile(r"\[slow=([0-9.]+)\]")


def _patch(module) -> None:
    engine_class = module.WanEngine
    original_run = engine_class._run

    def _run(self, r, on_step, watch):
        if "[oom]" in r.prompt:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (test fault)")
        match = _SLOW.search(r.prompt)
        slow = float(match.group(1)) if match else 0.0
        hang = "[hang]" in r.prompt
        if slow or hang:
            inner = on_step

            def on_step(step, total, stage):
                if stage == "denoise" and step >= 1:
                    if hang and step >= 2:
                        time.sleep(3600)
                    if slow:
                        time.sleep(slow)
                return inner(step, total, stage)

        return original_run(self, r, on_step, watch)

    engine_class._run = _run


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "wanserve.engine.engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _PatchOnImport())
