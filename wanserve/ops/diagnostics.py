"""`wanserve diagnose`: is this machine ready to serve, and if not, why?

Each check returns a `Check` (ok / warn / fail with a one-line detail and, for problems, what to
do). Checks that need torch import it inside, so `--health` works from a machine without torch.
"""

from __future__ import annotations

import importlib
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wanserve.settings import Settings, SettingsError, load_settings

Status = Literal["ok", "warn", "fail"]

# Minor versions the test suite ran on (their Wan, parallel and tokenizer APIs change between minors).
TESTED_MINORS = {"diffusers": "0.42", "transformers": "5.24"}
REQUIRED_PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "ftfy", "av", "imageio_ffmpeg", "PIL",
                     "safetensors", "accelerate", "fastapi", "uvicorn", "sqlalchemy", "alembic", "pydantic_settings")


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    data: dict = field(default_factory=dict)


def _version(module: object) -> str:
    return str(getattr(module, "__version__", getattr(module, "VERSION", "?")))


def check_installation() -> list[Check]:
    checks: list[Check] = []
    py = sys.version_info
    checks.append(Check("python", "ok" if py >= (3, 11) else "fail", platform.python_version(),
                        "" if py >= (3, 11) else "wanserve needs Python 3.11 or newer"))
    missing, versions = [], {}
    for name in REQUIRED_PACKAGES:
        try:
            versions[name] = _version(importlib.import_module(name))
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            missing.append(f"{name} ({type(e).__name__}: {e})")
    if missing:
        checks.append(Check("packages", "fail", "cannot import: " + "; ".join(missing),
                            "reinstall: ./scripts/setup.sh (or pip install -e .)"))
    else:
        checks.append(Check("packages", "ok", ", ".join(f"{k} {v}" for k, v in versions.items()
                                                     if k in ("torch", "diffusers", "transformers")), data=versions))
    for name, minor in TESTED_MINORS.items():
        got = versions.get(name)
        if got and not got.startswith(minor + "."):
            checks.append(Check(f"{name} version", "warn", f"{got} installed; tests ran on {minor}.x",
                                f"pip install '{name}=={minor}.*' if generation misbehaves"))
    if "imageio_ffmpeg" in versions:
        try:
            import imageio_ffmpeg

            checks.append(Check("ffmpeg", "ok", imageio_ffmpeg.get_ffmpeg_exe()))
        except Exception as e:  # noqa: BLE001
            checks.append(Check("ffmpeg", "warn", f"no ffmpeg binary ({e})", "pip install imageio-ffmpeg"))
    return checks


def check_settings() -> tuple[Settings | None, list[Check]]:
    try:
        settings = load_settings()
    except SettingsError as e:
        return None, [Check("settings", "fail", str(e).replace("\n", " "), "fix the variables named above")]
    return settings, [Check("settings", "ok", "every variable valid")]


def check_hardware(settings: Settings) -> list[Check]:
    from wanserve.engine import devices

    checks: list[Check] = []
    try:
        info = devices.detect(settings.device)
    except devices.DeviceError as e:
        return [Check("devices", "fail", str(e), "install the driver / torch build, or set DEVICE=auto")]
    tools = [t for t in ("nvidia-smi", "npu-smi") if shutil.which(t)]
    detail = info.describe() + (f"; tools: {', '.join(tools)}" if tools else "")
    status: Status = "ok"
    fix = ""
    if info.kind == "cpu" and tools:
        status, fix = "warn", "an accelerator tool is installed but torch sees no device: check the torch build"
    checks.append(Check("devices", status, detail, fix, {"kind": info.kind, "count": info.count}))
    try:
        from wanserve.engine.distributed.layout import validate_layout
        from wanserve.worker.placement import plan_groups

        layout = validate_layout(settings, settings.group_size, info)
        groups = plan_groups(settings)  # exactly what the supervisor will start
        checks.append(Check("layout", "ok", f"{len(groups)} group(s) of {layout.describe()}, "
                                            f"attention {layout.attention_backend}, dist {info.dist_backend}"))
    except SettingsError as e:
        checks.append(Check("layout", "fail", str(e), "change the layout settings named above"))
    return checks


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check_model(settings: Settings) -> list[Check]:
    from wanserve.engine.checkpoints.detect import inspect_official_folder
    from wanserve.variants import ModelFolderError, detect_diffusers_variant, is_diffusers_folder

    folder = settings.model_ckpt_dir
    if folder is None:
        demo = settings.data_dir / "demo-model"
        state = "built" if (demo / "model_index.json").is_file() else "built on first start (seconds, offline)"
        return [Check("model", "warn", f"demo model (random weights: videos are noise), {state}",
                      "set MODEL_CKPT_DIR to a Wan model folder for real videos")]
    try:
        if is_diffusers_folder(folder):
            variant = detect_diffusers_variant(folder)
            index = json.loads((folder / "model_index.json").read_text())
            problems = []
            for name, entry in index.items():
                if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
                    continue
                part = folder / name
                if not part.is_dir():
                    problems.append(f"{name}/ missing")
                elif name in ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder") and not any(
                    p.suffix in (".safetensors", ".bin") for p in part.iterdir()
                ):
                    problems.append(f"{name}/ has no weights")
            if problems:
                raise ModelFolderError(f"{folder}: " + "; ".join(problems))
            layout = "diffusers"
        else:
            variant = inspect_official_folder(folder).variant
            layout = "official Wan"
    except ModelFolderError as e:
        return [Check("model", "fail", str(e), "complete the folder or point MODEL_CKPT_DIR elsewhere")]
    size = _folder_bytes(folder)
    tasks = ", ".join(t.value for t in variant.tasks)
    return [Check("model", "ok", f"{variant.name} ({layout} layout, {size / 1024**3:.1f} GiB; tasks: {tasks})",
                  data={"variant": variant.name, "bytes": size})]


def check_storage(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    for name, path in (("data dir", settings.data_dir), ("results dir", settings.results_path)):
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
        except OSError as e:
            checks.append(Check(name, "fail", f"{path} is not writable ({e})", "fix permissions or DATA_DIR"))
            continue
        free = shutil.disk_usage(path).free / 1024**3
        status: Status = "ok" if free >= 5 else "warn"
        checks.append(Check(name, status, f"{path.resolve()} ({free:.1f} GiB free)",
                            "" if status == "ok" else "free disk space: results are written here"))
    return checks


def check_queue(settings: Settings) -> list[Check]:
    import sqlalchemy

    url = settings.queue_url
    shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3} if url.startswith("postgres") else {})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - the connection failure is the finding
        return [Check("queue database", "fail", f"{shown}: {type(e).__name__}: {str(e).splitlines()[0]}",
                      "start the database or fix DATABASE_URL")]
    return [Check("queue database", "ok", shown)]


def check_memory(settings: Settings) -> list[Check]:
    from wanserve.engine import devices

    info = devices.detect(settings.device)
    rows = devices.memory_report(info)
    checks = []
    model_bytes = _folder_bytes(settings.model_ckpt_dir) if settings.model_ckpt_dir else 0
    for row in rows:
        free = float(row.get("free_gib", 0))
        total = float(row.get("total_gib", 0))
        checks.append(Check(f"memory {row['device']}", "ok", f"{free:.1f} of {total:.1f} GiB free", data=row))
    if model_bytes and info.kind != "cpu":
        per_rank = model_bytes / (settings.group_size if settings.dit_fsdp else 1) / 1024**3
        smallest = min(float(r.get("free_gib", 0)) for r in rows)
        if per_rank > smallest:
            checks.append(Check("memory fit", "warn",
                                f"the weights (~{per_rank:.1f} GiB per rank) exceed the free memory ({smallest:.1f} GiB)",
                                "enable DIT_FSDP with several ranks, T5_CPU, or CPU_OFFLOAD=model"))
        else:
            checks.append(Check("memory fit", "ok", f"weights ~{per_rank:.1f} GiB per rank"))
    return checks


def check_pipeline(settings: Settings) -> list[Check]:
    """Load the model and generate a tiny video end to end (the real code path, small sizes)."""
    from wanserve import media
    from wanserve.engine.engine import WanEngine
    from wanserve.request import GenerationRequest

    start = time.perf_counter()
    try:
        engine = WanEngine.from_settings(settings)
        load = time.perf_counter() - start
        task = engine.variant.tasks[0]
        kwargs: dict = {}
        with tempfile.TemporaryDirectory() as tmp:
            if task.value in ("i2v", "flf2v"):
                from PIL import Image

                Image.new("RGB", (128, 128), (90, 120, 200)).save(Path(tmp) / "in.png")
                kwargs["image"] = str(Path(tmp) / "in.png")
                if task.value == "flf2v":
                    kwargs["last_image"] = kwargs["image"]
            grid = engine.variant.grid
            request = GenerationRequest(task=task, prompt="diagnostic run", size=f"{grid * 4}*{grid * 4}",
                                        num_frames=5, infer_steps=2, seed=0, **kwargs)
            result = engine.generate(request)
            media.write_mp4(result.frames, Path(tmp) / "out.mp4", result.request.fps)
    except Exception as e:  # noqa: BLE001 - any failure of the smoke run is the finding
        return [Check("pipeline", "fail", f"{type(e).__name__}: {e}", "see the message; run with LOG_LEVEL=debug")]
    run = time.perf_counter() - start - load
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    return [Check("pipeline", "ok", f"{engine.model_label}: load {load:.1f}s, {task.value} "
                                    f"{request.size} x 5 frames x 2 steps in {run:.1f}s ({stages})")]


def check_health(url: str, api_key: str | None = None) -> list[Check]:
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=5.0,
                             headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        health = response.json()
    except (httpx.HTTPError, ValueError) as e:
        return [Check("service", "fail", f"{url}: not reachable ({type(e).__name__})",
                      "start it with `wanserve serve` or scripts/start_service.sh, or pass --url")]
    status = str(health.get("status", "?"))
    workers = health.get("workers") or []
    queue = health.get("queue") or {}
    detail = (f"{url}: {status}, model {health.get('model')}, {len(workers)} group(s) "
              f"[{', '.join(str(w.get('state')) for w in workers)}], queue {queue}")
    verdict: Status = {"ok": "ok", "degraded": "warn"}.get(status, "fail")
    return [Check("service", verdict, detail, "" if verdict == "ok" else "see `wanserve serve` logs",
                  data=health)]


def run_checks(*, quick: bool, health: bool, memory: bool, pipeline: bool, url: str | None,
               api_key: str | None = None, on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """The selected checks. No flag: everything but the pipeline run and the live service."""
    everything = not (quick or health or memory or pipeline)
    results: list[Check] = []

    def add(checks: list[Check]) -> None:
        for check in checks:
            results.append(check)
            if on_check:
                on_check(check)

    settings, found = check_settings()
    static = everything or quick or pipeline
    if static:
        add(check_installation())
    add(found)
    if settings is None:
        return results
    if static:
        add(check_hardware(settings))
        add(check_model(settings))
    if everything:
        add(check_storage(settings))
        add(check_queue(settings))
    if everything or memory:
        add(check_memory(settings))
    if pipeline:
        add(check_pipeline(settings))
    if health:
        host = "127.0.0.1" if settings.server_host in ("0.0.0.0", "::") else settings.server_host
        add(check_health(url or f"http://{host}:{settings.server_port}",
                         api_key or (settings.api_keys[0] if settings.api_keys else None)))
    return results
