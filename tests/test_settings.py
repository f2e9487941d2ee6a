"""Settings: every variable typed, bad values named with what is allowed."""

from __future__ import annotations

import pytest

from wanserve.settings import SettingsError, load_settings


def test_defaults_match_the_original_description(monkeypatch):
    for name in ("SERVER_PORT", "T5_CPU", "ULYSSES_SIZE", "MODEL_CKPT_DIR"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(_env_file=None)
    assert s.server_port == 8088
    assert s.t5_cpu is False and s.dit_fsdp is False and s.vae_parallel is False
    assert s.ulysses_size == 1 and s.group_size == 1
    assert s.model_ckpt_dir is None
    assert s.server_host == "127.0.0.1"


def test_environment_is_read(monkeypatch, tmp_path):
    monkeypatch.setenv("T5_CPU", "true")
    monkeypatch.setenv("ULYSSES_SIZE", "4")
    monkeypatch.setenv("CFG_PARALLEL", "2")
    monkeypatch.setenv("MODEL_CKPT_DIR", str(tmp_path))
    monkeypatch.setenv("API_KEYS", "k1, k2")
    s = load_settings(_env_file=None)
    assert s.t5_cpu is True
    assert s.group_size == 8
    assert s.model_ckpt_dir == tmp_path
    assert s.api_keys == ["k1", "k2"]


def test_dotenv_file_is_read(monkeypatch, tmp_path):
    monkeypatch.delenv("TASK_TIMEOUT", raising=False)
    env = tmp_path / ".env"
    env.write_text("TASK_TIMEOUT=77\n")
    assert load_settings(_env_file=str(env)).task_timeout == 77


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("ULYSSES_SIZE", "0", "greater than or equal to 1"),
        ("T5_CPU", "maybe", "boolean"),
        ("SERVER_PORT", "70000", "less than or equal to 65535"),
        ("DTYPE", "fp8", "'bf16'"),
        ("CACHE_POLICY", "magic", "'first_block'"),
        ("DEVICES", "gpu0", "list of device indices"),
        ("CACHE_PAB_TIMESTEP_RANGE", "800,100", "lo must be below hi"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings(_env_file=None)
    assert name in str(err.value)
    assert words in str(err.value)


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path

    from wanserve.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert not missing, f"README settings table lacks: {missing}"


def test_nothing_outside_settings_reads_the_environment():
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent / "wanserve"
    offenders = [str(p) for p in root.rglob("*.py")
                 if p.name != "settings.py" and re.search(r"os\.environ|os\.getenv", p.read_text())]
    assert not offenders, offenders


def test_api_and_tasks_never_import_torch():
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent / "wanserve"
    offenders = [str(p) for folder in ("api", "tasks") for p in (root / folder).rglob("*.py")
                 if re.search(r"^\s*(import torch|from torch)", p.read_text(), re.M)]
    assert not offenders, offenders
