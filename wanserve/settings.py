"""Every environment variable wanserve reads, in one typed object.

Values come from the process environment and from a `.env` file in the working directory
(the environment wins). Nothing else in the package reads `os.environ`: take a `Settings`
from `get_settings()` (or build one with overrides in tests and libraries).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DeviceKind = Literal["auto", "cuda", "npu", "cpu"]
DtypeName = Literal["auto", "bf16", "fp16", "fp32"]
CachePolicy = Literal["first_block", "taylorseer", "pab"]
OffloadMode = Literal["none", "model", "group"]


class SettingsError(ValueError):
    """A setting has a value wanserve cannot use; the message names the variable."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        protected_namespaces=(),
    )

    # --- The original service description -------------------------------------------------
    model_ckpt_dir: Path | None = Field(
        None,
        description="Wan model folder (diffusers layout or an official Wan checkpoint folder). "
        "Unset: the built-in demo model (random weights, output is noise).",
    )
    t5_cpu: bool = Field(False, description="Run the T5 text encoder on the CPU (saves ~10 GB device memory).")
    dit_fsdp: bool = Field(False, description="Shard the diffusion transformer across the ranks of a group (FSDP2).")
    vae_parallel: bool = Field(False, description="Split the VAE decode across the ranks of a group.")
    ulysses_size: int = Field(1, ge=1, description="Ulysses (sequence) parallel degree within a group.")
    max_concurrent_tasks: int = Field(64, ge=1, description="Queued + running tasks accepted before 429.")
    task_timeout: float = Field(1800.0, gt=0, description="Seconds a task may run before it fails with `timeout`.")
    server_port: int = Field(8088, ge=1, le=65535, description="HTTP port.")
    use_attention_cache: bool = Field(False, description="Turn on the step cache chosen by CACHE_POLICY.")

    # --- Engine --------------------------------------------------------------------------
    data_dir: Path = Field(Path("./wanserve-data"), description="Results, queue database, demo model.")
    device: DeviceKind = Field("auto", description="auto | cuda | npu | cpu.")
    dtype: DtypeName = Field("auto", description="auto (bf16 on GPU/NPU, fp32 on CPU) | bf16 | fp16 | fp32.")
    vae_dtype: DtypeName = Field("fp32", description="VAE precision (the official Wan choice is fp32).")
    attention_backend: str = Field(
        "auto", description="auto, or a diffusers attention backend (flash, _native_cudnn, _native_npu, native, ...)."
    )
    vae_tiling: bool = Field(False, description="Decode the VAE in tiles (less memory for large videos).")
    vae_tile_size: int | None = Field(
        None, ge=32, description="VAE tile side in pixels (default: diffusers' 256); tiles overlap by a quarter."
    )
    compile: bool = Field(
        False, description="torch.compile the transformer blocks: faster steps after a warm-up on the first request."
    )
    cpu_offload: OffloadMode = Field(
        "none", description="none | model (each model on the device only while it runs) | group (block by block)."
    )
    cache_policy: CachePolicy = Field("first_block", description="Step cache used when USE_ATTENTION_CACHE is on.")
    cache_threshold: float = Field(0.05, gt=0, description="FirstBlockCache relative-change threshold.")
    cache_interval: int = Field(5, ge=1, description="TaylorSeer: full computation every N steps.")
    cache_warmup_steps: int = Field(3, ge=0, description="TaylorSeer: steps always computed at the start.")
    cache_taylor_order: int = Field(1, ge=1, le=4, description="TaylorSeer: Taylor expansion order.")
    cache_pab_skip: int = Field(2, ge=1, description="PyramidAttentionBroadcast: reuse attention for N blocks/steps.")
    cache_pab_timestep_range: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [100, 800], description="PyramidAttentionBroadcast: active timestep range 'lo,hi'."
    )
    demo_steps_limit: int = Field(
        0, ge=0, description="If > 0, cap infer_steps on the demo model (keeps CPU demos quick)."
    )

    # --- Multi-device groups -------------------------------------------------------------
    devices: str = Field(
        "auto", description="Devices to use: auto, a list like '0,1,2,3', or on CPU a process count."
    )
    ring_size: int = Field(1, ge=1, description="Ring attention degree within a group.")
    cfg_parallel: int = Field(1, ge=1, le=2, description="1, or 2 to run the cond/uncond passes on two ranks.")
    t5_fsdp: bool = Field(False, description="Shard the T5 encoder across the ranks of a group (FSDP2).")
    collective_timeout: float = Field(600.0, gt=0, description="Seconds before a stuck collective ends the group.")
    master_port: int = Field(0, ge=0, le=65535, description="Rendezvous port of a group (0: pick a free one).")
    # Set by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR): this process is one rank of a
    # group someone else started. Unset: wanserve starts the ranks of its groups itself.
    rank: int | None = Field(None, ge=0, description="torchrun: this process's rank in its group.")
    world_size: int | None = Field(None, ge=1, description="torchrun: the number of ranks in the group.")
    local_rank: int | None = Field(None, ge=0, description="torchrun: this process's index on its host.")
    master_addr: str = Field("127.0.0.1", description="Rendezvous host of a group (torchrun sets it).")

    # --- Task service ----------------------------------------------------------------------
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the queue (default: SQLite file under DATA_DIR)."
    )
    max_attempts: int = Field(3, ge=1, description="Runs per task before a crash fails it for good.")
    lease_seconds: float = Field(30.0, gt=0, description="A running task's lease; renewed by its group's heartbeat.")
    result_ttl: float = Field(7 * 24 * 3600.0, gt=0, description="Seconds results are kept before deletion.")
    results_dir: Path | None = Field(None, description="Where videos go (default DATA_DIR/results).")
    watchdog_seconds: float = Field(600.0, gt=0, description="A group stuck in one step this long is restarted.")
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds SIGTERM waits for running tasks.")
    worker_groups: int = Field(0, ge=0, description="Override the number of worker groups (0: devices / group size).")
    worker_id: str | None = Field(None, description="Name of this supervisor in /health (default: host name).")

    # --- HTTP API --------------------------------------------------------------------------
    server_host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 to serve other machines.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer keys; empty: no auth."
    )
    allowed_image_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts image URLs may point at even when private."
    )
    allow_private_urls: bool = Field(False, description="Allow image URLs on private/loopback addresses.")
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest accepted image/video upload.")
    fetch_timeout: float = Field(20.0, gt=0, description="Seconds to fetch an image URL.")
    public_url: str | None = Field(None, description="Base URL put in result links (default: the request's).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")

    @field_validator("api_keys", "allowed_image_hosts", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("cache_pab_timestep_range", mode="before")
    @classmethod
    def _int_pair(cls, value: Any) -> Any:
        value = _split_csv(value)
        if isinstance(value, list) and len(value) != 2:
            raise ValueError("needs two integers 'lo,hi'")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_ckpt_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("attention_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        value = value.strip()
        if value != "auto" and not value.replace("_", "").isalnum():
            raise ValueError("must be 'auto' or a diffusers attention backend name")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "auto":
            return value
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError("must be 'auto', a count ('2') or a list of device indices ('0,1,2,3')")
        return ",".join(parts)

    @model_validator(mode="after")
    def _layout(self) -> "Settings":
        if self.cache_pab_timestep_range[0] >= self.cache_pab_timestep_range[1]:
            raise ValueError("CACHE_PAB_TIMESTEP_RANGE: lo must be below hi")
        return self

    # --- Derived values --------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        """Ranks per model replica."""
        return self.ulysses_size * self.ring_size * self.cfg_parallel

    @property
    def results_path(self) -> Path:
        return self.results_dir or (self.data_dir / "results")

    @property
    def queue_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'wanserve.db').resolve()}"


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"]).upper() or "SETTINGS"
        got = item.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        lines.append(f"{name}: {item['msg']}{shown}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and .env); raise SettingsError naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise SettingsError(_describe(e)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
