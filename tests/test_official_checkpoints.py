"""Official Wan checkpoint folders: MODEL_CKPT_DIR pointed at the layout the official repos download.

A user story in three parts. Detection: every layout is recognised (without torch) and every
incomplete or foreign folder is refused with a message naming the file or key. Parity: each
converted component computes what the official architecture computes from the same file (checked
against independent reference forwards in `official_reference.py`, not against our own key maps).
Routes: the official folder loaded directly and the folder written by `wanserve convert` hold the
same weights and give the same video, offline.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import decode_mp4, psnr
from official_layout import (
    CLIP,
    CLIP_TOKENS,
    T5,
    load_reference,
    make_official_folder,
    official_config,
    reference_clip,
    reference_dit,
    reference_t5,
    reference_vae,
)
from official_reference import official_clip_pixels
from PIL import Image

from wanserve.engine.checkpoints import detect
from wanserve.engine.checkpoints.tensors import CheckpointKeyError
from wanserve.engine.components import load_components
from wanserve.variants import VARIANTS, ModelFolderError

ALL = list(VARIANTS)
FP32 = torch.float32


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> dict[str, Path]:
    """Every variant as a tiny official-layout folder (the T2V one sharded, with an index)."""
    root = tmp_path_factory.mktemp("official")
    return {
        name: make_official_folder(root / name, name, seed=10 * i, shards=2 if name == "wan2.1-t2v" else 1)
        for i, name in enumerate(ALL)
    }


@pytest.fixture(scope="module")
def loaded(official):
    """load_components of each official folder in fp32, loaded once on first use."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_components(official[name], FP32, FP32)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    """Each official folder converted (in-process) to diffusers layout, on first use."""
    from wanserve.engine.checkpoints.convert import convert_official_folder

    root = tmp_path_factory.mktemp("converted")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = convert_official_folder(official[name], root / name)
        return cache[name]

    return get


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def expert_folders(folder: Path, name: str) -> list[Path]:
    if VARIANTS[name].two_experts:
        return [folder / detect.HIGH_NOISE_DIR, folder / detect.LOW_NOISE_DIR]
    return [folder]


# ============================================================================ detection


def test_detection_names_every_variant_without_importing_torch(official):
    code = (
        "import json, sys\n"
        "from wanserve.engine.checkpoints.detect import inspect_official_folder\n"
        f"folders = {json.dumps({k: str(v) for k, v in official.items()})}\n"
        "found = {k: inspect_official_folder(v).variant.name for k, v in folders.items()}\n"
        "print(json.dumps({'found': found, 'torch': 'torch' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result == {"found": {name: name for name in ALL}, "torch": False}


def test_layout_lists_the_files_each_variant_needs(official):
    sharded = detect.inspect_official_folder(official["wan2.1-t2v"])
    assert [p.name for p in sharded.transformers[0].shards] == [
        "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert sharded.clip is None and sharded.vae.name == detect.VAE21_FILE
    assert detect.inspect_official_folder(official["wan2.1-flf2v"]).clip.name == detect.CLIP_FILE
    a14b = detect.inspect_official_folder(official["wan2.2-i2v-a14b"])
    assert [d.folder.name for d in a14b.transformers] == [detect.HIGH_NOISE_DIR, detect.LOW_NOISE_DIR]
    assert a14b.clip is None and a14b.vae.name == detect.VAE21_FILE
    assert detect.inspect_official_folder(official["wan2.2-ti2v-5b"]).vae.name == detect.VAE22_FILE


def test_each_variant_loads_with_its_served_tasks_and_official_defaults(official, loaded):
    for name in ALL:
        c = loaded(name)
        assert c.variant is VARIANTS[name]
        assert c.random_weights and "random weights" in c.label
        assert (c.transformer_2 is not None) == VARIANTS[name].two_experts
        assert (c.image_encoder is not None) == VARIANTS[name].uses_clip
        assert c.scheduler_config["flow_shift"] == VARIANTS[name].defaults.sample_shift
    assert VARIANTS["wan2.2-t2v-a14b"].boundary_ratio == 0.875
    assert VARIANTS["wan2.2-i2v-a14b"].boundary_ratio == 0.9


# ============================================================================ parity with the official architecture


def test_t5_matches_the_official_umt5_encoder(official, loaded):
    c = loaded("wan2.1-t2v")
    ref = load_reference(reference_t5(c.text_encoder.config.vocab_size, 0), official["wan2.1-t2v"] / detect.T5_FILE)
    # Two prompts of different lengths: padding masks, and positions far enough apart for the log buckets.
    tokens = c.tokenizer(["a cat walks on the grass in the sun , cinematic , high detail , 4k", "two dogs"],
                         padding="max_length", max_length=40, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ours = c.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
        theirs = ref(tokens.input_ids, tokens.attention_mask)
    real = tokens.attention_mask.bool()  # the pipelines keep only the real tokens
    assert relative_error(ours[real], theirs[real]) < 1e-5
    assert c.text_encoder.encoder.embed_tokens.weight is c.text_encoder.shared.weight


@pytest.mark.parametrize("name", ALL)
def test_transformer_matches_the_official_forward(name, official, loaded):
    c = loaded(name)
    config = official_config(name)
    torch.manual_seed(1)
    x = torch.randn(1, config["in_dim"], 3, 8, 8)
    context = torch.randn(1, 512, T5["dim"])  # text tokens padded to text_len, as both pipelines do
    clip = None
    if VARIANTS[name].uses_clip:
        clip = torch.randn(2 if name == "wan2.1-flf2v" else 1, CLIP_TOKENS, CLIP["dim"])
    tokens = 3 * 4 * 4
    # TI2V-5B takes a timestep per token (the clean first frame at 0); the others one per sample.
    t = torch.cat([torch.zeros(16), torch.full((tokens - 16,), 850.0)])[None] if name == "wan2.2-ti2v-5b" \
        else torch.tensor([850.0])
    for model, folder in zip(c.experts, expert_folders(official[name], name), strict=True):
        ref = load_reference(reference_dit(name, 0), folder)
        with torch.no_grad():
            ours = model(hidden_states=x, timestep=t, encoder_hidden_states=context,
                         encoder_hidden_states_image=clip, return_dict=False)[0]
            theirs = ref(x, t, context, clip)
        assert ours.shape == theirs.shape == (1, config["out_dim"], 3, 8, 8)
        assert relative_error(ours, theirs) < 1e-4, folder.name


@pytest.mark.parametrize("name", ["wan2.1-t2v", "wan2.2-ti2v-5b"])  # the two VAE files (Wan2.2 A14B uses 2.1's)
def test_vae_encodes_and_decodes_like_the_official_vae(name, official, loaded):
    c = loaded(name)
    version = "2.2" if name == "wan2.2-ti2v-5b" else "2.1"
    ref = load_reference(reference_vae(version, 0), official[name] / (detect.VAE22_FILE if version == "2.2" else detect.VAE21_FILE))
    torch.manual_seed(2)
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1  # 9 frames: the cached temporal chunks are exercised
    with torch.no_grad():
        dist = c.vae.encode(video).latent_dist
        mean, logvar = ref.encode_moments(video)
        assert relative_error(dist.mean, mean) < 1e-5
        assert relative_error(dist.logvar, logvar.clamp(-30.0, 20.0)) < 1e-5  # diffusers clamps the log variance
        z = torch.randn_like(dist.mean)
        assert relative_error(c.vae.decode(z).sample, ref.decode(z)) < 1e-5
    expected = (16, 3, 8, 8) if version == "2.1" else (48, 3, 4, 4)  # 8x / 16x spatial, 4x temporal
    assert tuple(dist.mean.shape[1:]) == expected


@pytest.mark.parametrize("name", ["wan2.1-i2v", "wan2.1-flf2v"])
def test_clip_features_match_the_official_image_tower(name, official, loaded):
    c = loaded(name)
    ref = load_reference(reference_clip(0), official[name] / detect.CLIP_FILE)
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))  # not square: stretched, not cropped
    pixels = c.image_processor(images=[image], return_tensors="pt").pixel_values
    assert torch.allclose(pixels, official_clip_pixels(image, CLIP["image_size"]), atol=1e-6)
    with torch.no_grad():
        out = c.image_encoder(pixel_values=pixels, output_hidden_states=True)
        states = ref.visual(pixels)
        pooled = ref.visual.pooled(pixels)
    assert len(out.hidden_states) == len(states) == CLIP["num_layers"] + 1
    # diffusers' Wan I2V pipeline takes hidden_states[-2]: all blocks but the last, as official Wan does.
    for ours, theirs in zip(out.hidden_states, states, strict=True):
        assert relative_error(ours, theirs) < 1e-5
    assert relative_error(out.pooler_output, pooled) < 1e-5  # post_norm too, though Wan never uses it


def test_every_checkpoint_tensor_is_used_once(official, loaded):
    """Nothing dropped, nothing duplicated: the loaded modules hold exactly as many numbers as the
    files, less the CLIP parts Wan never runs (text tower, temperature, projection head)."""
    from safetensors.torch import load_file

    for name in ALL:
        c, folder = loaded(name), official[name]
        file_numel = 0
        for expert in expert_folders(folder, name):
            for shard in expert.glob("diffusion_pytorch_model*.safetensors"):
                file_numel += sum(t.numel() for t in load_file(str(shard)).values())
        layout = detect.inspect_official_folder(folder)
        for path in (layout.t5, layout.vae, layout.clip):
            if path is not None:
                state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
                file_numel += sum(v.numel() for k, v in state.items()
                                  if not (k.startswith("textual.") or k in ("log_scale", "visual.head")))
        modules = [*c.experts, c.text_encoder, c.vae] + ([c.image_encoder] if c.image_encoder is not None else [])
        model_numel = sum(p.numel() for m in modules for p in m.parameters())  # tied embedding counted once
        assert model_numel == file_numel, name


# ============================================================================ dtypes


def test_dtypes_follow_the_engine_and_match_the_diffusers_route(official, converted):
    folder = official["wan2.1-i2v"]
    bf16 = load_components(folder, torch.bfloat16, FP32)
    assert {p.dtype for m in (bf16.transformer, bf16.text_encoder, bf16.image_encoder) for p in m.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.vae.parameters()} == {FP32}
    # Converting keeps the stored dtypes: fp32 transformer and VAE, bf16 T5 (its file name says so).
    from wanserve.engine.checkpoints.official import load_official_folder

    kept = load_official_folder(folder, None, None)
    assert {p.dtype for p in kept.transformer.parameters()} == {FP32}
    assert {p.dtype for p in kept.text_encoder.parameters()} == {torch.bfloat16}
    # fp16: both routes keep the same modules in fp32 (the libraries' own _keep_in_fp32_modules).
    ours = load_components(folder, torch.float16, FP32)
    theirs = load_components(converted("wan2.1-i2v"), torch.float16, FP32)
    for name in ("transformer", "text_encoder", "image_encoder", "vae"):
        a = {k: v.dtype for k, v in getattr(ours, name).state_dict().items()}
        b = {k: v.dtype for k, v in getattr(theirs, name).state_dict().items()}
        assert a == b, name
    assert ours.transformer.scale_shift_table.dtype == FP32


# ============================================================================ the two routes


@pytest.mark.parametrize("name", ALL)
def test_official_folder_and_converted_folder_hold_the_same_model(name, official, converted, loaded):
    from wanserve.engine.engine import EngineOptions, WanEngine
    from wanserve.request import GenerationRequest
    from wanserve.variants import detect_diffusers_variant

    folder = converted(name)
    assert detect_diffusers_variant(folder) is VARIANTS[name]
    a, b = loaded(name), load_components(folder, FP32, FP32)
    for part in ("transformer", "transformer_2", "text_encoder", "vae", "image_encoder"):
        ma, mb = getattr(a, part), getattr(b, part)
        assert (ma is None) == (mb is None), part
        if ma is not None:
            sa, sb = ma.state_dict(), mb.state_dict()
            assert sa.keys() == sb.keys(), part
            assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert a.scheduler_config["flow_shift"] == b.scheduler_config["flow_shift"]
    assert type(a.image_processor) is type(b.image_processor)

    task = VARIANTS[name].tasks[0]
    inputs = {}
    if task.value in ("i2v", "flf2v"):
        inputs["image"] = str(_image(official[name].parent))
    if task.value == "flf2v":
        inputs["last_image"] = str(_image(official[name].parent, seed=5))
    request = GenerationRequest(task=task, prompt="a red car drives through a forest road", size="64*64",
                                num_frames=5, infer_steps=2, seed=7, **inputs)
    videos = [WanEngine.load(f, EngineOptions(device="cpu")).generate(request).frames for f in (official[name], folder)]
    assert videos[0].shape == (5, 64, 64, 3)
    # Identical weights; CPU matmul results depend on the memory alignment of the (memory-mapped)
    # weights, which differs between the two files, so pixels may differ by a rounding step.
    assert np.abs(videos[0].astype(int) - videos[1]).max() <= 2
    assert psnr(videos[0], videos[1]) > 45


def _image(root: Path, seed: int = 4) -> Path:
    path = root / f"input-{seed}.png"
    if not path.exists():
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_convert_then_model_ckpt_dir_gives_the_same_video_offline(official, tmp_path):
    """The user's way: `wanserve convert`, then MODEL_CKPT_DIR at either folder, with the hub offline."""
    source, target = official["wan2.1-i2v"], tmp_path / "wan-i2v-diffusers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DATA_DIR": str(tmp_path / "data")}
    env.pop("MODEL_CKPT_DIR", None)
    done = subprocess.run([sys.executable, "-m", "wanserve", "convert", str(source), str(target)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (target / "model_index.json").is_file() and "wrote" in done.stderr
    image = _image(tmp_path)
    args = ["generate", "-p", "a cat walks on the grass", "--image", str(image), "--size", "64*64",
            "--num-frames", "5", "--steps", "2", "--seed", "11", "--device", "cpu"]
    videos = []
    for folder, out in ((source, tmp_path / "official.mp4"), (target, tmp_path / "converted.mp4")):
        if folder == source:
            run = subprocess.run([sys.executable, "-m", "wanserve", *args, "-o", str(out)],
                                 env={**env, "MODEL_CKPT_DIR": str(folder)}, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr
        else:  # the same CLI code path in-process, to spare a second interpreter start
            from wanserve.cli.generate import run_generation
            from wanserve.request import GenerationRequest
            from wanserve.settings import load_settings

            run_generation(load_settings(model_ckpt_dir=folder, device="cpu", data_dir=tmp_path / "data"),
                           GenerationRequest(task="i2v", prompt="a cat walks on the grass", image=str(image),
                                             size="64*64", num_frames=5, infer_steps=2, seed=11), out)
        videos.append(decode_mp4(out)[0])
    assert videos[0].shape == videos[1].shape == (5, 64, 64, 3)
    assert psnr(videos[0], videos[1]) > 40


def test_converted_folder_is_plain_diffusers(converted):
    """Anyone can load the output with diffusers alone (no wanserve), offline."""
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(str(converted("wan2.1-flf2v")), local_files_only=True)
    assert pipe.transformer.config.pos_embed_seq_len == 2 * CLIP_TOKENS
    assert pipe.image_encoder.config.image_size == CLIP["image_size"]


def test_loading_never_opens_a_network_connection(official, converted, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("wan2.1-flf2v", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"):
        load_components(official[name], FP32, FP32)
        load_components(converted(name), FP32, FP32)


# ============================================================================ errors


def _copy(official: dict[str, Path], name: str, tmp_path: Path) -> Path:
    target = tmp_path / f"{name}-copy"
    shutil.copytree(official[name], target)
    return target


def _rewrite_safetensors(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = {k: v.clone() for k, v in load_file(str(path)).items()}
    change(state)
    save_file(state, str(path))


@pytest.mark.parametrize("name, remove, expected", [
    ("wan2.1-t2v", detect.T5_FILE, detect.T5_FILE),
    ("wan2.1-i2v", detect.CLIP_FILE, detect.CLIP_FILE),
    ("wan2.1-flf2v", detect.VAE21_FILE, detect.VAE21_FILE),
    ("wan2.2-ti2v-5b", detect.VAE22_FILE, detect.VAE22_FILE),
    ("wan2.1-i2v", "config.json", "neither model_index.json"),
    ("wan2.1-t2v", "diffusion_pytorch_model-00002-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"),
    ("wan2.2-t2v-a14b", "low_noise_model", "low_noise_model/"),
    ("wan2.2-i2v-a14b", "high_noise_model/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors"),
    ("wan2.2-ti2v-5b", "google", detect.TOKENIZER_DIR),
])
def test_incomplete_folder_names_the_missing_file(name, remove, expected, official, tmp_path):
    folder = _copy(official, name, tmp_path)
    victim = folder / remove
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    with pytest.raises(ModelFolderError, match=expected.replace(".", r"\.").replace("*", r"\*")):
        load_components(folder, FP32, FP32)


def test_wrong_vae_for_the_variant_is_named(official, tmp_path):
    folder = _copy(official, "wan2.2-ti2v-5b", tmp_path)
    (folder / detect.VAE22_FILE).rename(folder / detect.VAE21_FILE)
    with pytest.raises(ModelFolderError, match=r"lacks Wan2\.2_VAE\.pth .*other Wan VAE"):
        detect.inspect_official_folder(folder)


@pytest.mark.parametrize("config, expected", [
    ({"_class_name": "UNet2DConditionModel", "in_channels": 4}, "UNet2DConditionModel"),
    ({"_class_name": "WanModel", "model_type": "t2v", "dim": 24}, "lacks ffn_dim"),
    ({**official_config("wan2.1-t2v"), "model_type": "s2v"}, "model_type='s2v'"),
    ({**official_config("wan2.1-t2v"), "in_dim": 36}, "in_dim=36"),
])
def test_foreign_config_is_refused_with_a_reason(config, expected, official, tmp_path):
    folder = _copy(official, "wan2.1-flf2v", tmp_path)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=expected):
        detect.inspect_official_folder(folder)


def test_foreign_or_damaged_weight_files_are_named(official, tmp_path):
    folder = _copy(official, "wan2.1-i2v", tmp_path)
    # The T5 file replaced by the CLIP checkpoint: a foreign file under the T5 name.
    shutil.copy(folder / detect.CLIP_FILE, folder / detect.T5_FILE)
    with pytest.raises(CheckpointKeyError, match=r"models_t5_umt5-xxl-enc-bf16\.pth has no .*not Wan's umt5-xxl encoder"):
        load_components(folder, FP32, FP32)
    # A truncated safetensors file.
    folder = _copy(official, "wan2.1-flf2v", tmp_path)
    weights = folder / detect.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFolderError, match=r"diffusion_pytorch_model\.safetensors is not a readable safetensors file"):
        load_components(folder, FP32, FP32)


def test_damaged_tokenizer_is_named(official, tmp_path):
    folder = _copy(official, "wan2.2-t2v-a14b", tmp_path)
    (folder / detect.TOKENIZER_DIR / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"google/umt5-xxl is not a readable tokenizer folder"):
        load_components(folder, FP32, FP32)


def test_unused_and_missing_keys_are_named(official, tmp_path):
    folder = _copy(official, "wan2.1-flf2v", tmp_path)
    weights = folder / detect.WEIGHTS_FILE
    _rewrite_safetensors(weights, lambda s: s.update({"blocks.0.cross_attn.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointKeyError, match=r"transformer \(.*\): checkpoint keys it has no place for: blocks\.0\.cross_attn\.extra\.weight"):
        load_components(folder, FP32, FP32)
    _rewrite_safetensors(weights, lambda s: (s.pop("blocks.0.cross_attn.extra.weight"), s.pop("head.modulation")))
    with pytest.raises(CheckpointKeyError, match=r"weights the checkpoint lacks: scale_shift_table"):
        load_components(folder, FP32, FP32)
    _rewrite_safetensors(weights, lambda s: s.update({"head.modulation": torch.zeros(1, 2, 24)}))
    # T5: a block's FFN gate missing; CLIP: a key outside both towers; Wan2.1 VAE: an unknown key.
    state = torch.load(str(folder / detect.T5_FILE), weights_only=True)
    state.pop("blocks.1.ffn.gate.0.weight")
    torch.save(state, folder / detect.T5_FILE)
    with pytest.raises(CheckpointKeyError, match=r"lacks: encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_0\.weight"):
        load_components(folder, FP32, FP32)
    shutil.copy(official["wan2.1-flf2v"] / detect.T5_FILE, folder / detect.T5_FILE)
    state = torch.load(str(folder / detect.CLIP_FILE), weights_only=True)
    state["visual.transformer.0.attn.rel_pos"] = torch.zeros(3)
    torch.save(state, folder / detect.CLIP_FILE)
    with pytest.raises(CheckpointKeyError, match=r"visual\.transformer\.0\.attn\.rel_pos"):
        load_components(folder, FP32, FP32)
    shutil.copy(official["wan2.1-flf2v"] / detect.CLIP_FILE, folder / detect.CLIP_FILE)
    state = torch.load(str(folder / detect.VAE21_FILE), weights_only=True)
    state["decoder.extra.gamma"] = torch.ones(3)
    torch.save(state, folder / detect.VAE21_FILE)
    with pytest.raises(CheckpointKeyError, match=r"VAE \(Wan2\.1_VAE\.pth\).*decoder\.extra\.gamma"):
        load_components(folder, FP32, FP32)


def test_shapes_that_disagree_with_the_config_are_named(official, tmp_path):
    folder = _copy(official, "wan2.1-t2v", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dim": 48, "num_heads": 4}))
    with pytest.raises(CheckpointKeyError, match=r"patch_embedding\.weight is \(24, 16, 1, 2, 2\), but .*config\.json says dim=48"):
        load_components(folder, FP32, FP32)
    (folder / "config.json").write_text(json.dumps(config))
    state = torch.load(str(folder / detect.T5_FILE), weights_only=True)
    state["blocks.0.attn.o.weight"] = torch.zeros(32, 16, dtype=torch.bfloat16)
    torch.save(state, folder / detect.T5_FILE)
    with pytest.raises(CheckpointKeyError, match=r"has shape \(32, 16\) in the checkpoint, the model needs \(32, 32\)"):
        load_components(folder, FP32, FP32)


def test_wan22_vae_unknown_key_is_named(official, tmp_path):
    folder = _copy(official, "wan2.2-ti2v-5b", tmp_path)
    state = torch.load(str(folder / detect.VAE22_FILE), weights_only=True)
    state["encoder.downsamples.0.downsamples.5.residual.0.gamma"] = state.pop("encoder.downsamples.0.downsamples.0.residual.0.gamma")
    torch.save(state, folder / detect.VAE22_FILE)
    with pytest.raises(CheckpointKeyError, match=r"encoder\.downsamples\.0\.downsamples\.5\.residual\.0\.gamma"):
        load_components(folder, FP32, FP32)


def test_clip_variant_without_clip_projection_is_explained(official, tmp_path):
    folder = _copy(official, "wan2.1-i2v", tmp_path)
    _rewrite_safetensors(folder / detect.WEIGHTS_FILE,
                         lambda s: [s.pop(k) for k in [k for k in s if k.startswith("img_emb.")]])
    with pytest.raises(CheckpointKeyError, match=r"conditions on CLIP features, but the weights have no img_emb"):
        load_components(folder, FP32, FP32)


def test_cli_convert_reports_bad_folders_with_exit_code_2(official, tmp_path):
    broken = _copy(official, "wan2.1-t2v", tmp_path)
    (broken / detect.T5_FILE).unlink()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    for src, dst, message in ((broken, tmp_path / "out", detect.T5_FILE),
                              (official["wan2.1-t2v"], busy, "exists and is not an empty folder")):
        run = subprocess.run([sys.executable, "-m", "wanserve", "convert", str(src), str(dst)],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 2
        assert message in " ".join(run.stderr.split())
    assert not (tmp_path / "out").exists()


# ============================================================================ memory


def test_loading_maps_weights_instead_of_copying_them(tmp_path):
    """The memory claim, small: a bf16 transformer loaded as bf16 adds (almost) no private memory;
    its weights are the file's mapped pages (measured in a fresh process by the benchmark's code)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("load_memory", Path(__file__).parents[1] / "benchmarks" / "load_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(dim=512, ffn=2048, layers=12, shards=2, t5_layers=0, file_dtype="bf16")
    size = bench.write_checkpoints(tmp_path, args)["transformer"]
    ours = bench.run_child("transformer", "wanserve", tmp_path, "bf16")
    assert size > 80 * 2**20 and abs(ours["model_bytes"] - size) < 0.01 * size  # bf16 file, bf16 model
    assert ours["peak_anon"] < 0.2 * size  # private memory: a small fraction of the checkpoint (a copy would be 1x)
    assert ours["peak_rss"] < 1.3 * size  # everything resident after reading every weight, mapped pages included
