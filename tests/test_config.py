import pytest

from tokenbook.config import ConfigError, compose, options


def test_scales_pick_per_scale_values():
    n = {s: compose("prepacking", s).chapter.n_prompts for s in ("smoke", "cpu", "gpu")}
    assert n["smoke"] < n["cpu"] < n["gpu"]
    assert compose("prepacking", "cpu").scale.name == "cpu"


def test_override_replaces_a_per_scale_value_at_every_scale():
    for s in ("smoke", "gpu"):
        assert compose("prepacking", s, ["chapter.n_prompts=3"]).chapter.n_prompts == 3


def test_model_group_can_be_swapped():
    assert compose("prepacking", "cpu").model.name == "smollm2-135m"
    assert compose("prepacking", "cpu", ["model=random-llama"]).model.source == "config"


def test_composed_config_is_read_only():
    cfg = compose("prepacking", "cpu")
    with pytest.raises(Exception):
        cfg.chapter.n_prompts = 5


@pytest.mark.parametrize("override, expected", [
    ("model=gpt5", "valid choices for model: hf, random-llama, smollm2-135m"),
    ("scale=huge", "valid choices for scale: cpu, gpu, smoke"),
    ("chapter.n_promts=3", "valid keys in 'chapter':"),
    ("chapter.distributions.bimodal.kind=x", "valid keys in 'chapter.distributions': long_tail, narrow, wide"),
    ("sed=1", "valid keys in the top level: chapter, device, dtype, model, scale, seed"),
])
def test_bad_overrides_name_the_valid_choices(override, expected):
    with pytest.raises(ConfigError) as err:
        compose("prepacking", "cpu", [override])
    assert expected in str(err.value)
    if "valid keys in 'chapter'" in expected:
        assert "n_prompts" in str(err.value)


def test_bad_scale_and_malformed_override():
    with pytest.raises(ConfigError, match="valid scales: smoke, cpu, gpu"):
        compose("prepacking", "laptop")
    with pytest.raises(ConfigError, match="key=value"):
        compose("prepacking", "cpu", ["n_prompts"])


def test_missing_mandatory_value_is_reported():
    with pytest.raises(ConfigError, match="model.path"):
        compose("prepacking", "cpu", ["model=hf"])


def test_every_chapter_config_composes_at_every_scale():
    for slug in options("chapter"):
        for s in ("smoke", "cpu", "gpu"):
            compose(slug, s)
