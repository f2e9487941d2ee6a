"""Peak memory while loading large official-layout Wan checkpoints, against the checkpoint size.

    python benchmarks/load_memory.py                         # ~2.8 GB transformer + ~2.9 GB T5, bf16
    python benchmarks/load_memory.py --layers 30 --dim 1536 --t5-layers 2 --load-dtype bf16 --naive
    python benchmarks/load_memory.py --json                  # one JSON line per measurement

Writes random weights in the official layout and key names (a Wan2.1-T2V-1.3B-shaped transformer as
config.json + sharded safetensors, and an umt5-xxl-shaped encoder .pth with fewer blocks), then loads
each in a fresh process through wanserve's official-folder loader while a thread samples the
process's resident memory every 5 ms: anonymous memory (private copies: what can run a machine out
of memory) and file-backed memory (memory-mapped checkpoint pages: page cache, reclaimable).
`--naive` adds the usual non-mapped route for contrast: a model allocated with random init, the
file read whole into memory, then load_state_dict copying one into the other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GB = 1024**3


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class Sampler:
    """Peak anonymous / file-backed / total resident memory of this process."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = _status()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now[key])
            time.sleep(0.005)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        now = _status()  # the state at the end counts too (short phases can fall between samples)
        for key in self.peak:
            self.peak[key] = max(self.peak[key], now[key])


# ----------------------------------------------------------------------------------------- writing
def dit_shapes(dim: int, ffn: int, layers: int, text_dim: int = 4096, freq: int = 256, in_dim: int = 16,
               out_dim: int = 16) -> dict[str, tuple[int, ...]]:
    """Official WanModel (t2v) key -> shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out_dim * 4, dim), "head.head.bias": (out_dim * 4,), "head.modulation": (1, 2, dim),
    }
    for i in range(layers):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}.{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}.{attn}.{proj}.bias"] = (dim,)
            shapes[f"{b}.{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}.{attn}.norm_k.weight"] = (dim,)
        shapes.update({
            f"{b}.norm3.weight": (dim,), f"{b}.norm3.bias": (dim,),
            f"{b}.ffn.0.weight": (ffn, dim), f"{b}.ffn.0.bias": (ffn,),
            f"{b}.ffn.2.weight": (dim, ffn), f"{b}.ffn.2.bias": (dim,),
            f"{b}.modulation": (1, 6, dim),
        })
    return shapes


def t5_shapes(layers: int, dim: int = 4096, ffn: int = 10240, heads: int = 64, vocab: int = 256384,
              buckets: int = 32) -> dict[str, tuple[int, ...]]:
    """Official umt5-xxl encoder key -> shape."""
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (vocab, dim), "norm.weight": (dim,)}
    for i in range(layers):
        b = f"blocks.{i}"
        shapes.update({
            f"{b}.norm1.weight": (dim,), f"{b}.norm2.weight": (dim,),
            f"{b}.attn.q.weight": (dim, dim), f"{b}.attn.k.weight": (dim, dim),
            f"{b}.attn.v.weight": (dim, dim), f"{b}.attn.o.weight": (dim, dim),
            f"{b}.pos_embedding.embedding.weight": (buckets, heads),
            f"{b}.ffn.gate.0.weight": (ffn, dim), f"{b}.ffn.fc1.weight": (ffn, dim), f"{b}.ffn.fc2.weight": (dim, ffn),
        })
    return shapes


def write_checkpoints(folder: Path, args) -> dict[str, int]:
    import torch
    from safetensors.torch import save_file

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.file_dtype]
    config = {"_class_name": "WanModel", "model_type": "t2v", "dim": args.dim, "ffn_dim": args.ffn,
              "freq_dim": 256, "in_dim": 16, "out_dim": 16, "num_heads": args.dim // 128,
              "num_layers": args.layers, "eps": 1e-6, "text_len": 512}
    dit = folder / "dit"
    dit.mkdir(parents=True)
    (dit / "config.json").write_text(json.dumps(config))
    shapes = dit_shapes(args.dim, args.ffn, args.layers)
    keys = list(shapes)
    per_shard = -(-len(keys) // args.shards)
    weight_map, total = {}, 0
    for s in range(args.shards):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
        part = {k: torch.randn(shapes[k], dtype=torch.float32).to(dtype) for k in keys[s * per_shard:(s + 1) * per_shard]}
        save_file(part, str(dit / name))
        weight_map.update(dict.fromkeys(part, name))
        total += (dit / name).stat().st_size
        del part
    (dit / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    if not args.t5_layers:
        return {"transformer": total}
    t5 = folder / "models_t5_umt5-xxl-enc-bf16.pth"
    state = {k: torch.randn(v, dtype=torch.float32).to(torch.bfloat16) for k, v in t5_shapes(args.t5_layers).items()}
    torch.save(state, t5)
    del state
    return {"transformer": total, "t5": t5.stat().st_size}


# ----------------------------------------------------------------------------------------- measuring
def measure(component: str, route: str, folder: str, load_dtype: str) -> dict:
    """Runs in a fresh process: load one component, return its memory peaks."""
    import torch

    from wanserve.engine import quiet_libraries

    quiet_libraries()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "keep": None}[load_dtype]
    root = Path(folder)
    # Everything imported before the baseline, so it counts only the load itself.
    from diffusers import WanTransformer3DModel  # noqa: F401  (lazy modules imported now, not during the load)
    from transformers import UMT5EncoderModel  # noqa: F401

    from wanserve.engine.checkpoints.detect import read_dit_files
    from wanserve.engine.checkpoints.t5_keys import load_t5
    from wanserve.engine.checkpoints.transformer_keys import load_transformer
    from wanserve.variants import VARIANTS

    baseline = _status()
    start = time.perf_counter()
    with Sampler() as sampler:
        if component == "transformer" and route == "wanserve":
            model = load_transformer(read_dit_files(root / "dit"), VARIANTS["wan2.1-t2v"], dtype)
        elif component == "t5" and route == "wanserve":
            model = load_t5(root / "models_t5_umt5-xxl-enc-bf16.pth", dtype)
        elif component == "transformer" and route == "naive":
            model = _naive_transformer(read_dit_files(root / "dit"), dtype)
        else:
            raise SystemExit(f"no route {route} for {component}")
    seconds = time.perf_counter() - start
    loaded = dict(sampler.peak)
    # Then read every weight once, as moving the model to a GPU or its first forward does: mapped
    # pages become resident now (file-backed), private copies would have shown up above already.
    with Sampler() as sampler, torch.no_grad():
        for p in model.parameters():
            p.sum()
    touched = {k: max(loaded[k], sampler.peak[k]) for k in loaded}
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "component": component, "route": route, "load_dtype": load_dtype, "seconds": round(seconds, 2),
        "model_bytes": params,
        "load_peak_rss": loaded["VmRSS"] - baseline["VmRSS"],
        "load_peak_anon": loaded["RssAnon"] - baseline["RssAnon"],
        "peak_rss": touched["VmRSS"] - baseline["VmRSS"],
        "peak_anon": touched["RssAnon"] - baseline["RssAnon"],
        "peak_file": touched["RssFile"] - baseline["RssFile"],
    }


def _naive_transformer(files, dtype):
    """The usual non-mapped route: real init, whole-file reads, a copying load_state_dict."""
    import safetensors.torch
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from wanserve.engine.checkpoints.tensors import open_safetensors
    from wanserve.engine.checkpoints.transformer_keys import transformer_config
    from wanserve.variants import VARIANTS

    header = open_safetensors(files.shards)  # mapped, only to read shapes for the config
    config = transformer_config(files, header, VARIANTS["wan2.1-t2v"])
    del header
    model = WanTransformer3DModel.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    state = {}
    for shard in files.shards:
        state.update(safetensors.torch.load(shard.read_bytes()))
    model.load_state_dict(convert_wan_transformer_to_diffusers(state), strict=True)
    return model


def run_child(component: str, route: str, folder: Path, load_dtype: str) -> dict:
    code = (
        # Appended, not prepended: benchmarks/queue.py must not shadow the stdlib's queue.
        "import json, sys; sys.path.append(%r); import load_memory as m; "
        "print(json.dumps(m.measure(%r, %r, %r, %r)))" % (str(Path(__file__).parent), component, route, str(folder),
                                                         load_dtype)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{component}/{route} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1536, help="transformer width (Wan2.1 1.3B: 1536, 14B: 5120)")
    parser.add_argument("--ffn", type=int, default=8960, help="transformer FFN width (1.3B: 8960)")
    parser.add_argument("--layers", type=int, default=30, help="transformer blocks (1.3B: 30)")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--t5-layers", type=int, default=2, help="umt5-xxl blocks written (the real one has 24; 0: no T5)")
    parser.add_argument("--file-dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--load-dtype", choices=("bf16", "fp32", "keep"), default="bf16")
    parser.add_argument("--naive", action="store_true", help="also measure the non-mapped copying route")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        sizes = write_checkpoints(folder, args)
        if not args.json:
            t5 = f"T5 {sizes['t5'] / GB:.2f} GB (bf16 .pth)" if "t5" in sizes else "no T5"
            print(f"wrote transformer {sizes['transformer'] / GB:.2f} GB ({args.file_dtype}, {args.shards} shards), "
                  f"{t5} in {time.perf_counter() - start:.0f}s; loading as {args.load_dtype}")
        runs = [("transformer", "wanserve")] + ([("t5", "wanserve")] if "t5" in sizes else [])
        if args.naive:
            runs.append(("transformer", "naive"))
        for component, route in runs:
            result = run_child(component, route, folder, args.load_dtype)
            result["checkpoint_bytes"] = sizes[component]
            if args.json:
                print(json.dumps(result))
                continue
            size = sizes[component]
            print(f"{component:11s} {route:8s} checkpoint {size / GB:5.2f} GB, model {result['model_bytes'] / GB:5.2f} GB"
                  f" | load {result['seconds']:5.1f}s: peak RSS +{result['load_peak_rss'] / GB:5.2f} GB"
                  f" | after reading every weight: peak RSS +{result['peak_rss'] / GB:5.2f} GB"
                  f" ({result['peak_rss'] / size:4.2f}x checkpoint) = private +{result['peak_anon'] / GB:5.2f} GB"
                  f" ({result['peak_anon'] / size:4.2f}x) + mapped file {result['peak_file'] / GB:5.2f} GB")


if __name__ == "__main__":
    main()
