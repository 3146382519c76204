"""The spec builder: the size cascade, defaults, bounds and text checks, for both protocols."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fluxserve.spec import (
    DRAWN_SEED_BELOW,
    MAX_SEED,
    GenerationSpec,
    SpecError,
    SpecOptions,
    build_spec,
    check_options,
)
from fluxserve.spec.geometry import aspect_to_size, parse_aspect_ratio, parse_size


@dataclass(frozen=True)
class Entry:
    """A catalog entry, as the builder sees one."""

    id: str = "flux-kontext-pro"
    family: str = "kontext"
    steps: int = 28
    guidance: float = 2.5
    area: int = 1024 * 1024
    default_output_format: str = "png"


KONTEXT, PRO, ULTRA = (
    Entry(),
    Entry("flux-dev", "pro", 28, 3.0, 1024 * 1024, "jpeg"),
    Entry("flux-pro-1.1-ultra", "ultra", 28, 3.0, 4 * 1024 * 1024, "jpeg"),
)


def size(entry: Entry, images: list[tuple[int, int]] | None = None, **options: object) -> tuple[int, int]:
    spec = build_spec(entry, SpecOptions(prompt="x", **options), images or [])  # type: ignore[arg-type]
    return spec.width, spec.height


def test_size_cascade_in_order() -> None:
    # width/height > aspect_ratio > size > first input image > model default
    assert size(KONTEXT, [(300, 900)], width=512, height=768, aspect_ratio="16:9", size="1024x1536") == (
        512,
        768,
    )
    assert size(KONTEXT, [(300, 900)], aspect_ratio="16:9", size="1024x1536") == aspect_to_size("16:9")
    assert size(KONTEXT, [(300, 900)], size="1024x1536") == (1024, 1536)
    assert size(KONTEXT, [(300, 900)], size="auto") == aspect_to_size("3:7")  # clamped to 3:7
    assert size(KONTEXT) == (1024, 1024)
    assert size(PRO) == (1024, 768)
    assert size(ULTRA) == aspect_to_size("16:9", 4 * 1024 * 1024)


def test_defaults_come_from_the_model_and_seeds_are_drawn_small() -> None:
    spec = build_spec(PRO, SpecOptions(prompt="p"))
    assert (spec.steps, spec.guidance, spec.output_format, spec.model) == (28, 3.0, "jpeg", "flux-dev")
    assert 0 <= spec.seed < DRAWN_SEED_BELOW
    given = build_spec(
        PRO, SpecOptions(prompt="p", seed=MAX_SEED, steps=4, guidance=1.5, output_format="webp")
    )
    assert (given.seed, given.steps, given.guidance, given.output_format) == (MAX_SEED, 4, 1.5, "webp")


def test_input_megapixels_and_protocol_fields() -> None:
    spec = build_spec(
        KONTEXT,
        SpecOptions(prompt="p", protocol="openai", response_format="b64_json", partial_images=2, user="u"),
        [(1000, 1000), (500, 500)],
    )
    assert spec.input_megapixels == 1.25
    assert (spec.protocol, spec.response_format, spec.partial_images, spec.user) == (
        "openai",
        "b64_json",
        2,
        "u",
    )
    assert spec.interactive


@pytest.mark.parametrize(
    "options,param",
    [
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"seed": -1}, "seed"),
        ({"steps": 0}, "steps"),
        ({"steps": 51}, "steps"),
        ({"guidance": 9.0}, "guidance"),
        ({"guidance": float("nan")}, "guidance"),
        ({"safety_tolerance": 7}, "safety_tolerance"),
        ({"num_images": 11}, "n"),
        ({"width": 512}, "width"),
        ({"width": 500, "height": 512}, "width"),
        ({"width": 2048, "height": 2560}, "width"),
        ({"size": "1024x100"}, "size"),
        ({"size": "１０２４x１０２４"}, "size"),
        ({"size": "99999999999999999999x1"}, "size"),
        ({"aspect_ratio": "1:3"}, "aspect_ratio"),
        ({"aspect_ratio": "²:1"}, "aspect_ratio"),
        ({"aspect_ratio": "9" * 5000 + ":1"}, "aspect_ratio"),
        ({"prompt": "a\ud800b"}, "prompt"),
        ({"prompt": "x" * 4097}, "prompt"),
        ({"webhook_secret": "\udfff"}, "webhook_secret"),
    ],
)
def test_bad_values_name_their_field(options: dict[str, object], param: str) -> None:
    fields: dict[str, object] = {"prompt": "x", **options}
    with pytest.raises(SpecError) as info:
        build_spec(KONTEXT, SpecOptions(**fields))  # type: ignore[arg-type]
    assert info.value.param == param


def test_prompt_limits_per_protocol() -> None:
    build_spec(KONTEXT, SpecOptions(prompt="x" * 4096))
    build_spec(KONTEXT, SpecOptions(prompt="x" * 32000, protocol="openai"))
    with pytest.raises(SpecError):
        build_spec(KONTEXT, SpecOptions(prompt="x" * 32001, protocol="openai"))


def test_parsers() -> None:
    assert parse_aspect_ratio(" 16 : 9 ") == parse_aspect_ratio("16:9")
    assert parse_size("512X768") == (512, 768)
    with pytest.raises(SpecError):
        parse_aspect_ratio("0:1")


def test_json_roundtrip_and_rows_from_before_typed_fields() -> None:
    spec = build_spec(KONTEXT, SpecOptions(prompt="p", protocol="openai", partial_images=1), [(64, 64)])
    assert GenerationSpec.from_json(spec.to_json()) == spec
    old = {
        "model": "flux-kontext-pro",
        "prompt": "p",
        "width": 256,
        "height": 256,
        "seed": 3,
        "steps": 2,
        "guidance": 2.5,
        "output_format": "png",
        "protocol": "openai",
        "input_images": ["inputs/j/0.png"],
        "extras": {
            "response_format": "b64_json",
            "base_url": "http://old",
            "input_mp": 0.5,
            "partial_images": 2,
        },
    }
    read = GenerationSpec.from_json(old)
    assert (read.response_format, read.input_megapixels, read.partial_images) == ("b64_json", 0.5, 2)
    assert read.input_images == ("inputs/j/0.png",)


def test_checked_options_build_what_build_spec_builds() -> None:
    # An adapter checks the options before fetching any image, then builds its one spec.
    cases: list[tuple[Entry, dict[str, object], list[tuple[int, int]]]] = [
        (KONTEXT, {"aspect_ratio": "16:9"}, [(300, 900)]),
        (KONTEXT, {}, [(300, 900)]),
        (KONTEXT, {"size": "auto", "loras": [("style", 0.5)]}, []),
        (PRO, {"width": 512, "height": 768, "steps": 4}, []),
        (ULTRA, {}, []),
    ]
    for entry, fields, images in cases:
        options = SpecOptions(prompt="p", seed=3, **fields)  # type: ignore[arg-type]
        checked = check_options(entry, options, ["style"])  # type: ignore[arg-type]
        assert checked.build(images) == build_spec(entry, options, images, ["style"])  # type: ignore[arg-type]


def test_check_options_needs_no_image_and_build_checks_the_count() -> None:
    with pytest.raises(SpecError) as refused:
        check_options(KONTEXT, SpecOptions(prompt="p", aspect_ratio="9:1"))  # type: ignore[arg-type]
    assert refused.value.param == "aspect_ratio"
    checked = check_options(KONTEXT, SpecOptions(prompt="p"))  # type: ignore[arg-type]
    assert checked.size is None  # nothing requested: the first input image will decide
    portrait = checked.build([(300, 900)])
    assert portrait.width < portrait.height and portrait.input_megapixels == 0.27
    with pytest.raises(SpecError, match="at most 4 input images"):
        checked.build([(64, 64)] * 5)
