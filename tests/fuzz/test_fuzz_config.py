"""Generated invalid gateway.yaml and profile documents: always a clear error naming the file, never a traceback."""

from __future__ import annotations

import copy
from importlib import resources

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FUZZ_EXAMPLES
from meter_gateway.config import ConfigError, parse_config
from meter_gateway.profiles import ProfileError, load_profiles
from meter_gateway.profiles.loader import parse_profile

SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
PROFILES = load_profiles()
BASE = yaml.safe_load("""
gateway: {name: g, timezone: UTC}
buses: [{id: b, type: modbus_rtu, port: /dev/ttyUSB0, baudrate: 9600}, {id: m, type: mbus, port: /dev/ttyS1}]
meters:
  - {id: a, bus: b, address: 1, profile: generic, bacnet_instance_base: 1000, modbus_unit: 1,
     poll_intervals: {power: 10}}
upstream: {modbus_tcp: {port: 502}, bacnet: {device_instance: 5}}
writes: {enabled: false, allow_modbus: [10.0.0.0/8]}
journal: {enabled: true, tariffs: {off_peak: ["22:00-06:00"]}, alerts: [{tenant: x, kwh: 3}]}
""")
PROFILE = yaml.safe_load(resources.files("meter_gateway.profiles").joinpath("data/generic.yaml").read_text())

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def paths(doc, prefix=()):
    """Every key path of a nested document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def mutated(base, data):
    doc = copy.deepcopy(base)
    all_paths = list(paths(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(all_paths))
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            action = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = data.draw(junk)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[data.draw(st.text(min_size=1, max_size=8))] = data.draw(junk)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@SETTINGS
@given(data=st.data())
def test_mutated_gateway_yaml_is_refused_clearly_or_accepted(data):
    text = yaml.safe_dump(mutated(BASE, data))
    try:
        parse_config(text, "site/gateway.yaml", profiles=PROFILES)
    except ConfigError as exc:
        assert str(exc).startswith("site/gateway.yaml:") and "Traceback" not in str(exc)


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text_is_refused_clearly(text):
    try:
        parse_config(text, "g.yaml", profiles=PROFILES)
    except ConfigError as exc:
        assert str(exc).startswith("g.yaml:")


@SETTINGS
@given(data=st.data())
def test_mutated_profiles_are_refused_clearly_or_accepted(data):
    text = yaml.safe_dump(mutated(PROFILE, data))
    try:
        parse_profile(text, "my/profile.yaml")
    except ProfileError as exc:
        assert str(exc).startswith("my/profile.yaml")
