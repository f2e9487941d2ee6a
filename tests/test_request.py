"""Request resolution: defaults, snapping (reported), refusals with the field named."""

from __future__ import annotations

import pytest

from wanserve.request import GenerationRequest, RequestError, parse_size, resolve, snap_frames
from wanserve.variants import VARIANTS, Task

T2V = VARIANTS["wan2.1-t2v"]
I2V = VARIANTS["wan2.1-i2v"]
TI2V = VARIANTS["wan2.2-ti2v-5b"]
A14B = VARIANTS["wan2.2-t2v-a14b"]


def test_sizes_parse_in_both_spellings():
    assert parse_size("832*480") == (832, 480)
    assert parse_size("832x480") == (832, 480)
    assert parse_size(" 64 X 32 ") == (64, 32)
    with pytest.raises(RequestError) as err:
        parse_size("big")
    assert err.value.field == "size"


@pytest.mark.parametrize(("asked", "used"), [(41, 41), (40, 41), (42, 41), (43, 45), (1, 1), (2, 1), (3, 5), (80, 81)])
def test_frames_snap_to_4n_plus_1(asked, used):
    assert snap_frames(asked) == used


def test_defaults_are_the_models():
    r = resolve(GenerationRequest(prompt="x"), T2V)
    assert (r.width, r.height, r.num_frames, r.infer_steps) == (832, 480, 81, 50)
    assert r.task is Task.t2v and r.adjustments == []
    assert r.negative_prompt  # the official negative prompt
    assert 0 <= r.seed < 2**31


def test_snapping_is_reported():
    r = resolve(GenerationRequest(prompt="x", size="500*300", num_frames=40), T2V)
    assert (r.width, r.height, r.num_frames) == (496, 304, 41)
    fields = {a.field: a for a in r.adjustments}
    assert fields["size"].requested == "500*300" and fields["size"].used == "496*304"
    assert "multiples of 16" in fields["size"].reason
    assert fields["num_frames"].requested == 40 and fields["num_frames"].used == 41


def test_grid_depends_on_the_model():
    r = resolve(GenerationRequest(prompt="x", size="512*500"), TI2V)
    assert (r.width, r.height) == (512, 512)  # TI2V-5B compresses 16x: grid 32


def test_task_is_inferred_from_inputs():
    assert GenerationRequest(prompt="x").inferred_task() is Task.t2v
    assert GenerationRequest(image="a.png").inferred_task() is Task.i2v
    assert GenerationRequest(image="a.png", last_image="b.png").inferred_task() is Task.flf2v
    assert GenerationRequest(video="a.mp4").inferred_task() is Task.v2v


@pytest.mark.parametrize(
    ("request_kwargs", "variant", "field", "words"),
    [
        (dict(prompt="x"), I2V, "task", "not served by model wan2.1-i2v"),
        (dict(task="i2v"), I2V, "image", "needs a first-frame image"),
        (dict(task="flf2v", image="a.png"), VARIANTS["wan2.1-flf2v"], "last_image", "needs a last-frame image"),
        (dict(task="v2v"), T2V, "video", "needs an input video"),
        (dict(prompt="x", size="4096*480"), T2V, "size", "above the largest"),
        (dict(prompt="x", size="4*4"), T2V, "size", "below the smallest"),
        (dict(prompt="x", num_frames=400), T2V, "num_frames", "above the limit"),
        (dict(prompt="x", guidance_scale_2=3.0), T2V, "guidance_scale_2", "one expert"),
        (dict(task="t2v", image="a.png"), TI2V, "image", "takes no image"),
    ],
)
def test_impossible_requests_name_the_field(request_kwargs, variant, field, words):
    with pytest.raises(RequestError) as err:
        resolve(GenerationRequest(**request_kwargs), variant)
    assert err.value.field == field
    assert words in err.value.message


def test_two_expert_guidance_defaults():
    r = resolve(GenerationRequest(prompt="x"), A14B)
    assert (r.guidance_scale, r.guidance_scale_2) == (3.0, 4.0)
    r = resolve(GenerationRequest(prompt="x", guidance_scale=2.5), A14B)
    assert r.guidance_scale_2 == 2.5  # one scale given: both experts use it


def test_field_validation_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        GenerationRequest(infer_steps=0)
    with pytest.raises(ValueError):
        GenerationRequest(strength=1.5)
    with pytest.raises(ValueError):
        GenerationRequest(size="wide")
    with pytest.raises(ValueError):
        GenerationRequest(unknown_field=1)
