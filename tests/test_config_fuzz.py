"""Fuzzing the params loader: any mapping either loads or raises ConfigError, never anything else."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_pipeline.config import Config, ConfigError, TrainConfig, parse_config

KNOWN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)] + ["data", "paths", "plots", "tracking"]
SECTION_KEYS = ["dir", "mean", "std", "max_train_images", "max_test_images", "checkpoint", "dpi", "width",
                "height", "cmap", "experiment", "log_model"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(SECTION_KEYS), st.text(max_size=8)), inner, max_size=4),
), max_leaves=8)
params = st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8)), values, max_size=6)


@settings(max_examples=400, deadline=None)
@given(params)
def test_any_mapping_loads_or_raises_config_error(raw):
    try:
        config = parse_config(raw)
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message
    else:
        assert isinstance(config, Config)
        assert parse_config(config.to_dict()) == config


@settings(max_examples=200, deadline=None)
@given(st.one_of(scalars, st.lists(scalars, max_size=3)))
def test_a_document_that_is_not_a_mapping_is_a_config_error(raw):
    try:
        parse_config(raw)
    except ConfigError:
        pass
    else:
        assert raw is None  # an empty params.yaml means "all defaults"
