"""Fuzzing the params loader: any mapping either loads or raises ConfigError, never anything else."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_pipeline.config import Config, ConfigError, TrainConfig, parse_config

# Every key params.yaml knows, read off the config classes, so that a new section or key is fuzzed too.
SECTIONS = {f.name: f.default for f in dataclasses.fields(Config) if f.name != "train"}
KNOWN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)] + list(SECTIONS)
SECTION_KEYS = sorted({f.name for section in SECTIONS.values() for f in dataclasses.fields(section)})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(SECTION_KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=8,
)
params = st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8)), values, max_size=6)


def field_values(spec: dataclasses.Field):
    """Any scalar, or one the field allows (its range or choices): a whole random mapping rarely loads."""
    allowed = [scalars]
    low, high = spec.metadata.get("low"), spec.metadata.get("high")
    if spec.metadata.get("choices"):
        allowed.append(st.sampled_from(spec.metadata["choices"]))
    elif low is not None and high is not None:
        allowed.append(st.integers(int(low), int(high)) if isinstance(low, int) else st.floats(low, high))
    return st.one_of(allowed)


def section(name: str):
    """{name: {some of its keys: values}}."""
    fields = dataclasses.fields(SECTIONS[name])
    return st.fixed_dictionaries({name: st.fixed_dictionaries({}, optional={f.name: field_values(f) for f in fields})})


# One section at a time: most of these load, so every section's round trip is checked, augment's too.
one_section = st.one_of([section(name) for name in sorted(SECTIONS)])


def _loads_or_raises_config_error(raw):
    try:
        config = parse_config(raw)
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message
        return None
    assert isinstance(config, Config)
    assert parse_config(config.to_dict()) == config
    return config


@settings(max_examples=400, deadline=None)
@given(params)
def test_any_mapping_loads_or_raises_config_error(raw):
    _loads_or_raises_config_error(raw)


@settings(max_examples=300, deadline=None)
@given(one_section)
def test_any_section_loads_or_raises_config_error(raw):
    config = _loads_or_raises_config_error(raw)
    if config is not None:
        ((name, values),) = raw.items()
        assert {key: getattr(getattr(config, name), key) for key in values} == values


def test_the_fuzzed_keys_cover_every_section_and_its_keys():
    assert set(SECTIONS) == {"augment", "data", "paths", "plots", "tracking"}
    assert {"shift", "rotate", "dir", "checkpoint", "dpi", "registered_model"} <= set(SECTION_KEYS)


@settings(max_examples=200, deadline=None)
@given(st.one_of(scalars, st.lists(scalars, max_size=3)))
def test_a_document_that_is_not_a_mapping_is_a_config_error(raw):
    try:
        parse_config(raw)
    except ConfigError:
        pass
    else:
        assert raw is None  # an empty params.yaml means "all defaults"
