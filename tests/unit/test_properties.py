"""Property-based tests of the parsers of outside input: whatever they are given, they
either succeed or raise their one documented error, never anything else.

Deterministic (tests/conftest.py loads a derandomized profile with no example database).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kubelearn import bounded_input, manifest  # noqa: E402
from kubelearn.distributed import wire  # noqa: E402
from kubelearn.em import reader  # noqa: E402
from kubelearn.hparams import HParams  # noqa: E402
from kubelearn_spec import names  # noqa: E402
from kubelearn_spec.schema import MAX_REPLICAS  # noqa: E402
from kubelearn_spec.validate import SpecError  # noqa: E402

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4),
                           max_leaves=20)
SHAPES = st.lists(st.integers(min_value=-2, max_value=2**70), max_size=40)


# -- the wire decoder ---------------------------------------------------------------------

SPECS = st.lists(st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=4) | st.integers(), "dtype": st.sampled_from(
        ["float32", "float64", "int64", "object", "complex64", 5]),
    "shape": SHAPES | JSON_VALUES, "frames": st.integers(-3, 5) | JSON_VALUES}), max_size=4)


@settings(max_examples=50)  # nested strategies: slow to draw, not to check
@given(header=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5),
       specs=SPECS | JSON_VALUES,
       buffers=st.lists(st.binary(max_size=64), max_size=6),
       expected=st.booleans())
def test_wire_decode_raises_only_wire_errors(header, specs, buffers, expected):
    frames = [json.dumps({**header, "tensors": specs}).encode(), *buffers]
    want = {"w": ("float32", (2, 2))} if expected else None
    try:
        _, tensors = wire.decode(frames, want)
    except wire.WireError:
        return
    for name, array in tensors.items():
        assert array.dtype.name in wire.ALLOWED_DTYPES
        if want is not None:
            assert (array.dtype.name, array.shape) == want[name]


_SOCKETS: list = []


def _through_zmq(frames):
    """``frames`` as a receiver gets them: zmq Frames, views of ZeroMQ's own buffers."""
    import zmq

    if not _SOCKETS:
        context = zmq.Context.instance()
        sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        sender.bind("inproc://properties-wire")
        receiver.connect("inproc://properties-wire")
        _SOCKETS.extend([sender, receiver])
    sender, receiver = _SOCKETS
    sender.send_multipart(frames, copy=False)
    return receiver.recv_multipart(copy=False)


@settings(max_examples=50)
@given(header=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
       specs=SPECS | JSON_VALUES,
       buffers=st.lists(st.binary(max_size=64), max_size=6),
       expected=st.booleans())
def test_wire_decode_of_received_frames_raises_only_wire_errors(header, specs, buffers,
                                                                expected):
    """As above, on frames as ZeroMQ delivers them; what decodes re-encodes (a tensor that
    is a whole frame goes back out as that frame) to the same tensors."""
    frames = _through_zmq([json.dumps({**header, "tensors": specs}).encode(), *buffers])
    want = {"w": ("float32", (2, 2))} if expected else None
    try:
        _, tensors = wire.decode(frames, want)
    except wire.WireError:
        return
    _, again = wire.decode(_through_zmq(wire.encode({}, tensors)), want)
    assert set(again) == set(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(again[name], array)
        assert again[name].dtype == array.dtype


@given(st.binary(max_size=512))
def test_wire_header_of_any_bytes(data):
    try:
        header = wire.decode_header(data)
    except wire.WireError:
        return
    assert isinstance(header, dict)


@given(st.integers(1, 200))
def test_wire_header_of_any_depth(depth):
    try:
        wire.decode_header(b'{"a":' + b"[" * depth + b"]" * depth + b"}")
    except wire.WireError:
        assert depth > wire.MAX_HEADER_DEPTH - 1


@given(arrays=st.dictionaries(
    st.text(min_size=1, max_size=5),
    st.tuples(st.sampled_from(["float32", "float64", "int64"]),
              st.lists(st.integers(0, 5), max_size=3), st.sampled_from("<>=")), max_size=4))
def test_wire_round_trip(arrays):
    tensors = {n: np.arange(int(np.prod(s)), dtype=np.dtype(d).newbyteorder(o)).reshape(s)
               for n, (d, s, o) in arrays.items()}
    _, out = wire.decode([bytes(f) for f in wire.encode({"op": "x"}, tensors)])
    assert set(out) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(out[name], value)
        assert out[name].dtype == value.dtype.newbyteorder("=")


# -- manifests ------------------------------------------------------------------------------

SPEC_VALUES = st.fixed_dictionaries({}, optional={
    "experimentFn": st.sampled_from(["kubelearn.examples.linear:experiment_fn", "a:b\n", "x"])
    | JSON_VALUES,
    "replicas": st.dictionaries(st.sampled_from(["ps", "worker", "master", "chief", "x"])
                                | st.integers(), st.integers(-1, 10**12) | JSON_VALUES,
                                max_size=4) | JSON_VALUES,
    "replicaSpecs": JSON_VALUES, "hparams": JSON_VALUES, "runPolicy": JSON_VALUES,
    "modelDir": JSON_VALUES, "successPolicy": JSON_VALUES,
})


@given(name=st.sampled_from(["linear", "linear\n", "-x", "a" * 70]) | JSON_VALUES,
       spec=SPEC_VALUES | JSON_VALUES, extra=st.dictionaries(st.text(max_size=5), JSON_VALUES,
                                                              max_size=3))
def test_manifest_parse_raises_only_spec_errors(name, spec, extra):
    document = {"apiVersion": names.API_VERSION, "kind": names.KIND,
                "metadata": {"name": name}, "spec": spec, **extra}
    try:
        parsed = manifest.parse(document)
    except SpecError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 2000
        return
    assert all(0 <= r.replicas <= MAX_REPLICAS for r in parsed.replicas.values())
    assert parsed.name.isprintable() and "\n" not in parsed.experiment_fn


@given(st.text(max_size=300))
def test_yaml_of_any_text(text):
    try:
        documents = bounded_input.load_yaml_all(text, "input.yaml")
    except bounded_input.InputError as exc:
        assert "input.yaml" in str(exc)
        return
    assert isinstance(documents, list)


YAML_PIECES = st.sampled_from(["a", ":", " ", "\n", "\t", "-", "[", "]", "{", "}", ",", "'",
                                '"', "&", "*", "!", "?", "%", "#", "|", ">", "@", "\\", "\x01"])


@given(st.lists(YAML_PIECES, max_size=30), st.lists(YAML_PIECES, max_size=30))
def test_a_yaml_error_never_quotes_the_text(before, after):
    secret = "SECRETWORD"
    text = "".join(before) + secret + "".join(after)
    try:
        bounded_input.load_yaml_all(text, "run.yaml")
    except bounded_input.InputError as exc:
        assert str(exc).startswith("run.yaml: ") and "\n" not in str(exc)
        assert secret not in str(exc) and secret[:3] not in str(exc), str(exc)


@given(st.integers(1, 12), st.integers(2, 12))
def test_yaml_aliases_are_never_expanded_past_the_bound(levels, fanout):
    lines = ["a0: &a0 [x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    expanded = sum(fanout ** i for i in range(levels + 1)) * 2
    try:
        bounded_input.load_yaml("\n".join(lines), "bomb.yaml")
    except bounded_input.InputError as exc:
        assert "alias" in str(exc) or "deeper" in str(exc)
        assert expanded > bounded_input.MAX_NODES // 4
        return
    assert expanded <= 2 * bounded_input.MAX_NODES


# -- TF_CONFIG and hparams, as ``kubelearn run`` takes them ---------------------------------

def _prepare(env: dict[str, str], hparams_arg: str | None = None) -> tuple[Any, str | None]:
    """What ``kubelearn run`` makes of the inputs: (fn, run_config, hparams, schedule) and
    None, or None and the one-line message it refuses them with."""
    import argparse

    from kubelearn import run_cli

    saved = {k: os.environ.get(k) for k in (*env, "TF_CONFIG", run_cli.ENV_HPARAMS)}
    os.environ.pop("TF_CONFIG", None)
    os.environ.pop(run_cli.ENV_HPARAMS, None)
    os.environ.update(env)
    try:
        return run_cli.prepare(argparse.Namespace(
            experiment_fn="kubelearn.examples.linear:experiment_fn", model_dir="/tmp/unused",
            hparams=hparams_arg, schedule="train")), None
    except run_cli.BadInput as exc:
        assert str(exc) and "\n" not in str(exc)
        return None, str(exc)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


TF_CONFIGS = st.fixed_dictionaries({}, optional={
    "cluster": st.dictionaries(st.sampled_from(["ps", "worker", "master", ""]) | st.text(),
                               st.lists(st.sampled_from(["127.0.0.1:2222", "h:0", "h:65536",
                                                         "a b:1", ":1", "[::1]:5"])
                                        | st.text(max_size=10), max_size=3) | JSON_VALUES,
                               max_size=3) | JSON_VALUES,
    "task": st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["ps", "worker", "master", "chief", "evaluator"])
        | JSON_VALUES, "index": st.integers(-1, 3) | JSON_VALUES}) | JSON_VALUES,
    "environment": JSON_VALUES})


@given(config=TF_CONFIGS | JSON_VALUES, raw=st.text(max_size=40), use_raw=st.booleans())
def test_tf_config_is_accepted_or_bad_input(config, raw, use_raw):
    text = raw if use_raw else json.dumps(config)
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\0", "")
    prepared, refusal = _prepare({"TF_CONFIG": text})
    if refusal is not None:
        assert "TF_CONFIG" in refusal  # names what it refuses
        return
    # Accepted: the run config is the task TF_CONFIG names, or the lone local chief.
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    task = parsed.get("task") if isinstance(parsed, dict) else None
    run_config = prepared[1]
    assert run_config.task_type == (task.get("type") if isinstance(task, dict) else None)


@given(env=JSON_VALUES, cli=st.text(max_size=40) | st.just("[" * 500))
def test_hparams_are_accepted_or_bad_input(env, cli):
    cli = cli.replace("\0", "") or None
    prepared, refusal = _prepare({"KUBELEARN_HPARAMS": json.dumps(env)}, cli)
    if refusal is not None:
        assert "KUBELEARN_HPARAMS" in refusal or "--hparams" in refusal  # names the source
        return
    # Accepted: the environment's values are there, but where --hparams overrides them.
    overridden = HParams.from_text(cli).values() if cli else {}
    assert prepared[2].values() == {**(env if isinstance(env, dict) else {}), **overridden}


# -- run readers ------------------------------------------------------------------------------

@given(meta=st.dictionaries(st.sampled_from(["id", "name", "status", "labels", "created_at",
                                             "upload", "pid", "host"]), JSON_VALUES,
                            max_size=6) | JSON_VALUES,
       lines=st.lists(st.binary(max_size=60) | JSON_VALUES.map(lambda v: json.dumps(
           {"step": 1, "metrics": {"loss": v}}).encode()), max_size=5))
def test_run_reader_reads_or_names_the_malformed_run(tmp_path_factory, meta, lines):
    import yaml

    path: Path = tmp_path_factory.mktemp("run")
    (path / "run.yaml").write_text(yaml.safe_dump(meta))
    (path / "metrics").mkdir()
    (path / "metrics" / "train.jsonl").write_bytes(b"\n".join(lines))
    try:
        record = reader.load_run(path)
    except reader.MalformedRun as exc:
        assert str(path) in str(exc)
        return
    for metric in record.metrics.get("train", []):
        assert all(isinstance(v, (int, float)) for v in metric.metrics.values())
    record.to_dict()


def test_a_yaml_date_is_the_text_the_api_server_would_get():
    from kubelearn import bounded_input

    assert bounded_input.load_yaml("when: 2020-01-01\nat: 2001-12-14t21:59:43.10-05:00\n",
                                   "x") == {"when": "2020-01-01",
                                            "at": "2001-12-14t21:59:43.10-05:00"}
