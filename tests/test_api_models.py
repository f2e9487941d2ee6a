"""The API knows the served model without torch (from configs, through wanserve.variants): the
label it shows must be the one the engine reports once it has loaded the folder, for every variant."""

from __future__ import annotations

from wanserve.api.served_model import configured_model, models_of
from wanserve.engine.engine import EngineOptions, WanEngine
from wanserve.settings import load_settings
from wanserve.tasks import GroupRecord, GroupState


def test_configured_model_matches_what_the_engine_reports(tiny_models, demo_data_dir, tmp_path):
    for name, folder in tiny_models.items():
        model = configured_model(load_settings(data_dir=tmp_path, model_ckpt_dir=folder))
        assert model.variant.name == name
        engine = WanEngine.load(folder, EngineOptions(device="cpu"))
        assert model.label == engine.model_label and model.variant is engine.variant
        assert model.label.endswith(" (demo, random weights)")
    demo = configured_model(load_settings(data_dir=demo_data_dir, model_ckpt_dir=demo_data_dir / "demo-model"))
    unset = configured_model(load_settings(data_dir=tmp_path))
    assert demo == unset and unset.label == "wanserve-demo (demo, random weights)"
    assert unset.label == WanEngine.load(None, EngineOptions(device="cpu"), data_dir=demo_data_dir).model_label
    broken = configured_model(load_settings(data_dir=tmp_path, model_ckpt_dir=tmp_path / "missing"))
    assert "not loadable" in broken.label


def _group(gid: str, state: GroupState, variant: str | None, label: str | None) -> GroupRecord:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return GroupRecord(id=gid, supervisor="s", host="h", supervisor_pid=1, state=state, pids=[], devices=[],
                       current_task_id=None, model_label=label, variant=variant, task_types=[], tasks_served=0,
                       restarts=0, last_error=None, started_at=now, heartbeat_at=now, last_step_at=None,
                       updated_at=now, responsive=True)


def test_models_of_the_registry_most_groups_first_and_stopped_ones_as_a_fallback():
    groups = [_group("a/g0", GroupState.idle, "wan2.1-i2v", "i2v-label"),
              _group("b/g0", GroupState.busy, "wan2.1-t2v", "t2v-label"),
              _group("b/g1", GroupState.idle, "wan2.1-t2v", "t2v-label"),
              _group("c/g0", GroupState.stopped, "wan2.2-ti2v-5b", "old")]
    assert [m.label for m in models_of(groups)] == ["t2v-label", "i2v-label"]
    assert [m.label for m in models_of(groups[3:])] == ["old"]
    assert models_of([_group("d/g0", GroupState.starting, None, None)]) == []
