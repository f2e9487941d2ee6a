"""Which model the service serves, as the API needs to know it (to snap requests, for /health and
for OpenAI's `model` field), without importing torch or reading weights.

The worker-group registry is the truth once a group has loaded its model (it records the
variant and label). Before that, MODEL_CKPT_DIR's configs say it (diffusers layout or an
official Wan folder, both detected torch-free), or, when it is unset, the built-in demo model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from wanserve.engine.checkpoints.detect import detect_official_variant, is_official_folder
from wanserve.settings import Settings
from wanserve.tasks import GroupRecord, GroupState, TaskStore
from wanserve.variants import (
    DEMO_LABEL,
    DEMO_NAME,
    DEMO_VARIANT,
    VARIANTS,
    ModelFolderError,
    Task,
    VariantSpec,
    detect_diffusers_variant,
    is_diffusers_folder,
    model_label,
)

REGISTRY_TTL = 2.0  # seconds a registry read is reused (submissions read it every time)
SERVING_STATES = (GroupState.idle, GroupState.busy, GroupState.starting, GroupState.restarting)


@dataclass(frozen=True)
class ServedModel:
    variant: VariantSpec
    label: str  # e.g. "Wan2.1-T2V-1.3B" or "demo (demo, random weights)"

    @property
    def names(self) -> set[str]:
        """What a client may put in `model` to ask for this one."""
        return {self.variant.name, self.label, self.label.split(" (", 1)[0]}

    def serves(self, task: Task) -> bool:
        return task in self.variant.tasks


class ModelNotServed(LookupError):
    """The `model` a client asked for is not served here; the message lists what is."""


class ServedModels:
    """The models the registered worker groups serve (or will serve), cached for a moment."""

    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self.settings = settings
        self.store = store
        self._lock = threading.Lock()
        self._cached: tuple[float, list[ServedModel], list[GroupRecord]] | None = None
        self._configured: ServedModel | None = None

    def configured(self) -> ServedModel:
        """The model MODEL_CKPT_DIR names (or the demo), from its configs alone."""
        if self._configured is None:
            self._configured = configured_model(self.settings)
        return self._configured

    def snapshot(self) -> tuple[list[ServedModel], list[GroupRecord]]:
        """(models served, newest first by how many live groups serve them; the groups)."""
        now = time.monotonic()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < REGISTRY_TTL:
                return self._cached[1], self._cached[2]
        groups = self.store.list_groups()
        models = models_of(groups) or [self.configured()]
        with self._lock:
            self._cached = (now, models, groups)
        return models, groups

    def pick(self, task: Task, requested: str | None = None) -> tuple[ServedModel, bool]:
        """The model to snap a `task` request against, and whether the task must be pinned to it
        (when several different models are served). ModelNotServed if `requested` matches none."""
        models, _ = self.snapshot()
        if requested:
            wanted = requested.strip()
            for model in models:
                if wanted in model.names:
                    return model, len(models) > 1
            raise ModelNotServed(f"model {requested!r} is not served here; served: "
                                 + ", ".join(sorted({m.variant.name for m in models})))
        for model in models:
            if model.serves(task):
                return model, len(models) > 1
        return models[0], len(models) > 1

    def label(self) -> str:
        models, _ = self.snapshot()
        return ", ".join(m.label for m in models)


def models_of(groups: list[GroupRecord]) -> list[ServedModel]:
    """Distinct models of the groups that serve or are coming back, most groups first."""
    counts: dict[tuple[str, str], int] = {}
    for group in groups:
        if group.variant in VARIANTS and group.state in SERVING_STATES:
            key = (group.variant, group.model_label or group.variant)
            counts[key] = counts.get(key, 0) + 1
    if not counts:  # only stopped / failed groups: the model they served is still the best guess
        for group in groups:
            if group.variant in VARIANTS:
                key = (group.variant, group.model_label or group.variant)
                counts[key] = counts.get(key, 0)
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return [ServedModel(VARIANTS[variant], label) for (variant, label), _ in ordered]


def configured_model(settings: Settings) -> ServedModel:
    """The model MODEL_CKPT_DIR names, labelled as the engine labels it (variants.model_label)."""
    folder = settings.model_ckpt_dir
    if folder is None:
        return ServedModel(VARIANTS[DEMO_VARIANT], f"{DEMO_NAME} ({DEMO_LABEL})")
    try:
        if is_diffusers_folder(folder):
            variant = detect_diffusers_variant(folder)
        elif is_official_folder(folder):
            variant = detect_official_variant(folder)
        else:
            raise ModelFolderError(f"{folder} is neither a diffusers Wan folder nor an official Wan checkpoint")
    except ModelFolderError:
        # The worker groups report the problem (/health shows their error); meanwhile requests
        # are checked against the most common variant rather than all refused.
        return ServedModel(VARIANTS["wan2.1-t2v"], f"{folder.name} (not loadable)")
    return ServedModel(variant, model_label(folder, variant))
