"""Device strings on JAX devices: parsing, the placement table, soft/strict placement, `Graph.place`.

Checks that need several devices run in a subprocess started with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (the flag must be set before JAX starts, and
this process has already started it); see `run_with_devices`.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import jaxmeta
from jaxmeta import cli
from jaxmeta._devices import DeviceSpec, Placement

HERE = os.path.dirname(os.path.abspath(__file__))
GRAPHS = os.path.join(HERE, "fixtures", "graphs")
DEVICES_META = os.path.join(GRAPHS, "devices.meta")
DEVICES_CKPT = os.path.join(GRAPHS, "devices.ckpt")
GPU_STRINGS = ["/job:worker/task:0/device:GPU:0", "/device:GPU:0"]


def run_with_devices(module: str, check: str, *args: str, count: int = 8, timeout: int = 300) -> str:
    """Runs `module.check(*args)` in a fresh CPU-only Python with `count` host devices; returns stdout."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code = (
        f"import sys; sys.path.insert(0, {HERE!r}); import jax; "
        "jax.config.update('jax_numpy_rank_promotion', 'raise'); "
        f"assert jax.device_count() == {count}, jax.devices(); "
        f"import {module}; {module}.{check}(*sys.argv[1:])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{check} failed in the {count}-device subprocess:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout


# -- parsing ----------------------------------------------------------------------------------------
PARSE_CASES = [
    ("/job:worker/replica:0/task:0/device:GPU:0", DeviceSpec("worker", 0, 0, "GPU", 0)),
    ("/job:localhost/replica:0/task:0/device:CPU:0", DeviceSpec("localhost", 0, 0, "CPU", 0)),
    ("/job:ps", DeviceSpec(job="ps")),
    ("/job:ps/task:1", DeviceSpec(job="ps", task=1)),
    ("/task:1/device:TPU:0", DeviceSpec(task=1, device_type="TPU", device_index=0)),
    ("/gpu:0", DeviceSpec(device_type="GPU", device_index=0)),
    ("/cpu:1", DeviceSpec(device_type="CPU", device_index=1)),
    ("/GPU:2", DeviceSpec(device_type="GPU", device_index=2)),
    ("/CPU:*", DeviceSpec(device_type="CPU")),
    ("cpu:0", DeviceSpec(device_type="CPU", device_index=0)),
    ("gpu", DeviceSpec(device_type="GPU")),
    ("/job:ps/task:1/cpu:0", DeviceSpec(job="ps", task=1, device_type="CPU", device_index=0)),
    ("/device:CPU:0", DeviceSpec(device_type="CPU", device_index=0)),
    ("/device:gpu:1", DeviceSpec(device_type="GPU", device_index=1)),
    ("/device:XLA_GPU:0", DeviceSpec(device_type="XLA_GPU", device_index=0)),
    ("/device:XLA_CPU:1", DeviceSpec(device_type="XLA_CPU", device_index=1)),
    ("/device:GPU:*", DeviceSpec(device_type="GPU")),
    ("/device:GPU", DeviceSpec(device_type="GPU")),
    ("/replica:3/task:*", DeviceSpec(replica=3)),
    ("/job:*/task:2", DeviceSpec(task=2)),
    ("/job:worker/replica:*/task:*/device:*:*", DeviceSpec(job="worker")),
    ("/job:ps/job:worker", DeviceSpec(job="worker")),  # the last one wins, as in TF
    ("", DeviceSpec()),
]
# The spellings TF's Python `tf.DeviceSpec` prints the same way (it rejects `*` indices, which TF's
# C++ parser and jaxmeta accept).
TF_COMPARABLE = [text for text, _ in PARSE_CASES if "*" not in text.replace("CPU:*", "") and text != "/device:GPU"]


@pytest.mark.parametrize("text,spec", PARSE_CASES, ids=[c[0] or "empty" for c in PARSE_CASES])
def test_parse(text, spec):
    assert DeviceSpec.parse(text) == spec
    assert DeviceSpec.parse(spec.to_string()) == spec  # the canonical spelling parses back


@pytest.mark.oracle
def test_canonical_spelling_matches_tensorflow():
    from oracle import get_tf

    tf = get_tf()
    for text in TF_COMPARABLE:
        assert DeviceSpec.parse(text).to_string() == tf.DeviceSpec.from_string(text).to_string(), text


@pytest.mark.parametrize("text", ["/gpu:x", "/foo:0", "/device:GPU:0:1", "/task:abc", "/job:a b", "/replica:-1"])
def test_parse_errors(text):
    with pytest.raises(jaxmeta.DevicePlacementError, match="device string") as info:
        DeviceSpec.parse(text)
    assert isinstance(info.value, jaxmeta.JaxmetaError)


# -- mapping, with stand-in devices ---------------------------------------------------------------
Fake = collections.namedtuple("Fake", "platform id")
GPU_HOST = [Fake("gpu", 0), Fake("gpu", 1), Fake("cpu", 10), Fake("cpu", 11)]  # default device first
CPU_HOST = [Fake("cpu", i) for i in range(4)]


@pytest.mark.parametrize(
    "devices,text,index,fallback",
    [
        (GPU_HOST, "/gpu:1", 1, False),
        (GPU_HOST, "/job:worker/replica:0/task:3/device:GPU:0", 0, False),
        (GPU_HOST, "/device:XLA_GPU:1", 1, False),
        (GPU_HOST, "/cpu:1", 3, False),
        (GPU_HOST, "/device:XLA_CPU:0", 2, False),
        (GPU_HOST, "/device:CPU:*", 2, False),
        (GPU_HOST, "/job:ps", 0, False),  # no device type: the default device, as TF lets any take it
        (GPU_HOST, "/gpu:2", 0, True),
        (GPU_HOST, "/device:TPU:0", 0, True),
        (GPU_HOST, "/device:SYCL:0", 0, True),
        (GPU_HOST, "/not a device", 0, True),
        (CPU_HOST, "/gpu:0", 0, True),
        (CPU_HOST, "/job:ps/task:0/device:CPU:3", 3, False),
        (CPU_HOST, "/cpu:4", 0, True),
    ],
)
def test_resolve(devices, text, index, fallback):
    row = Placement().resolve(text, devices)
    assert row.device is devices[index] and row.fallback == fallback


RULES = {"/job:ps": "cpu", "/job:worker/task:*": "gpu", "/job:worker/task:1": "cpu:1", "/gpu:1": "/device:CPU:0"}


@pytest.mark.parametrize(
    "text,index,rule",
    [
        ("/job:ps/task:0/device:GPU:0", 2, "/job:ps"),
        ("/job:worker/task:0/device:CPU:0", 0, "/job:worker/task:*"),
        ("/job:worker/task:1/device:GPU:0", 3, "/job:worker/task:1"),  # the most specific wins
        ("/job:worker/task:1/device:GPU:1", 3, "/job:worker/task:1"),  # 2 fields beat 2 fields listed later
        ("/device:GPU:1", 2, "/gpu:1"),
        ("/device:GPU:0", 0, None),
    ],
)
def test_placement_rules(text, index, rule):
    row = Placement(RULES).resolve(text, GPU_HOST)
    assert (row.device, row.rule, row.fallback) == (GPU_HOST[index], rule, False)


def test_placement_rule_ties_go_to_the_first_listed():
    placement = Placement({"/job:worker": "cpu:0", "/task:1": "cpu:1"})
    assert placement.resolve("/job:worker/task:1", CPU_HOST).device is CPU_HOST[0]
    placement = Placement({"/task:1": "cpu:1", "/job:worker": "cpu:0"})
    assert placement.resolve("/job:worker/task:1", CPU_HOST).device is CPU_HOST[1]


def test_placement_rule_to_a_missing_device_falls_back():
    row = Placement({"/job:ps": "gpu:5"}).resolve("/job:ps/cpu:0", GPU_HOST)
    assert row.device is GPU_HOST[0] and row.fallback and row.rule == "/job:ps"


def test_placement_to_a_jax_device():
    device = jax.devices()[0]
    row = Placement({"/job:ps": device}).resolve("/job:ps/device:GPU:7")
    assert row.device is device and not row.fallback


@pytest.mark.parametrize("rules", [{"/job:ps": 3}, {"/nonsense:1": "cpu"}, {"/job:ps": "/bad:0"}])
def test_bad_placement_rules(rules):
    with pytest.raises(jaxmeta.DevicePlacementError):
        jaxmeta.import_meta_graph(DEVICES_META, placement=rules)


# -- graphs, on this process's devices ------------------------------------------------------------
def test_cluster_devices_import_and_run_with_soft_placement():
    graph = jaxmeta.import_meta_graph(DEVICES_META)  # no clear_devices
    has_gpu = any(d.platform != "cpu" for d in jax.local_devices())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        table = graph.devices()
        variables = graph.place(graph.saver.restore(DEVICES_CKPT))
        graph.devices()
    record = [r for r in record if issubclass(r.category, jaxmeta.DevicePlacementWarning)]
    # Without a GPU the GPU strings fall back to the CPU: one warning, listing the whole mapping;
    # with one nothing falls back and nothing is said.
    assert len(record) == (0 if has_gpu else 1)
    for text in table if record else ():
        assert text in str(record[0].message)
    placed = collections.Counter(node.device for node in graph if node.device)
    assert {text: row.nodes for text, row in table.items()} == dict(placed)
    default = jax.local_devices()[0]
    for text in GPU_STRINGS:
        assert table[text].fallback != has_gpu
    assert table["/job:ps/task:0/device:CPU:0"].device == jax.local_devices(backend="cpu")[0]
    if not has_gpu:
        assert all(row.device == default for row in table.values())
    for value in variables.values():
        assert value.committed and value.devices() == {table["/job:ps/task:0/device:CPU:0"].device}

    expected = np.load(os.path.join(GRAPHS, "devices.expected.npz"))
    run = jax.jit(graph.function(["y:0", "out:0"], feeds=["x:0"]))
    if has_gpu:  # the variables live on the CPU (the parameter server), the compute on the GPU
        variables = graph.place(variables, device=table[GPU_STRINGS[0]].device)
    y, out = run(variables, expected["feed:x:0"])
    np.testing.assert_allclose(y, expected["out:y:0"], rtol=1e-6)
    np.testing.assert_allclose(out, expected["out:out:0"], rtol=1e-6)


def test_clear_devices_drops_placement():
    graph = jaxmeta.import_meta_graph(DEVICES_META, clear_devices=True, strict_devices=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert graph.devices() == {}
        variables = graph.saver.restore(DEVICES_CKPT)
        assert graph.place(variables) == variables


def test_strict_devices_raise_naming_every_missing_device():
    if any(d.platform != "cpu" for d in jax.local_devices()):
        pytest.skip("a GPU is present")
    with pytest.raises(jaxmeta.DevicePlacementError) as info:
        jaxmeta.import_meta_graph(DEVICES_META, strict_devices=True)
    assert isinstance(info.value, jaxmeta.JaxmetaError)
    for text in GPU_STRINGS:
        assert text in str(info.value)
    assert "placement=" in str(info.value)


def test_strict_devices_with_a_remap():
    graph = jaxmeta.import_meta_graph(DEVICES_META, strict_devices=True, placement={"/device:GPU:*": "cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = graph.devices()
    cpu = jax.local_devices(backend="cpu")[0]
    assert all(row.device == cpu and not row.fallback for row in table.values())
    assert {table[text].rule for text in GPU_STRINGS} == {"/device:GPU:*"}


@pytest.mark.filterwarnings("ignore::jaxmeta.DevicePlacementWarning")
def test_place_leaves_unplaced_and_string_values_alone():
    graph = jaxmeta.import_meta_graph(DEVICES_META, placement={"/job:ps": "cpu"})
    strings = np.array([b"a"], dtype=object)
    placed = graph.place({"w": np.ones((3, 2), np.float32), "not_a_variable": strings})
    assert placed["not_a_variable"] is strings and placed["w"].committed
    with pytest.raises(jaxmeta.DevicePlacementError, match="no device"):
        graph.place(placed, device="/device:TPU:3")


def test_inspect_shows_the_placement_table(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["inspect", DEVICES_META, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    placement = report["placement"]
    assert set(placement) == {d for d in report["devices"] if d}
    assert placement["/job:ps/task:0/device:CPU:0"] == {"device": "cpu:0", "nodes": 11, "fallback": False}
    assert cli.main(["inspect", DEVICES_META]) == 0
    assert "/job:ps/task:0/device:CPU:0  -> cpu:0" in capsys.readouterr().out


# -- 8 devices ------------------------------------------------------------------------------------
def test_variables_land_on_their_mapped_devices():
    out = run_with_devices("test_devices", "check_placement_on_8_devices")
    assert "ok" in out


def check_placement_on_8_devices() -> None:
    """(In the 8-device subprocess.) Remapped cluster devices, placed variables, and jit."""
    devices = jax.devices()
    rules = {"/job:ps": "cpu:3", "/job:worker": "cpu:5", "/device:GPU:*": "cpu:6"}
    graph = jaxmeta.import_meta_graph(DEVICES_META, placement=rules, strict_devices=True)
    table = graph.devices()
    assert table["/job:ps/task:0/device:CPU:0"].device == devices[3]
    assert table["/job:worker/task:0/device:GPU:0"].device == devices[5]  # 2 fields beat 1
    assert table["/device:GPU:0"].device == devices[6]
    assert table["/device:CPU:0"].device == devices[0]
    variables = graph.place(graph.saver.restore(DEVICES_CKPT))
    assert {name: value.devices() for name, value in variables.items()} == {"w": {devices[3]}, "b": {devices[3]}}

    expected = np.load(os.path.join(GRAPHS, "devices.expected.npz"))
    x = expected["feed:x:0"]
    run = jax.jit(graph.function("out:0", feeds=["x:0"]))
    out = run(variables, x)  # one jitted computation runs where its committed inputs are
    assert out.devices() == {devices[3]}
    np.testing.assert_allclose(out, expected["out:out:0"], rtol=1e-6)

    # Variables committed to different devices cannot meet in one computation (JAX's rule) ...
    split = {"w": jax.device_put(variables["w"], devices[1]), "b": jax.device_put(variables["b"], devices[2])}
    try:
        run(split, x)
    except ValueError as e:
        assert "incompatible devices" in str(e)
    else:
        raise AssertionError("JAX ran one computation over two committed devices")
    # ... so gather them on one device first: graph.place(variables, device=...).
    out = run(graph.place(split, device="cpu:5"), x)
    assert out.devices() == {devices[5]}
    np.testing.assert_allclose(out, expected["out:out:0"], rtol=1e-6)
    # A feed committed elsewhere is moved by an explicit in_shardings (JAX copies committed inputs there).
    sharding = jax.sharding.SingleDeviceSharding(devices[7])
    out = jax.jit(graph.function("out:0", feeds=["x:0"]), in_shardings=sharding)(split, jax.device_put(x, devices[2]))
    assert out.devices() == {devices[7]}
    print("ok")
