"""The per-experiment NetworkPolicy and the settings that turn it on."""

from __future__ import annotations

import pytest

from kubelearn_operator.netpol import (
    NetworkPolicyConfig,
    build_network_policy,
    network_policy_config,
    parse_selector,
)
from kubelearn_operator.objects import ExperimentRef
from kubelearn_spec import names

REF = ExperimentRef("linear", "ml", "uid-1")
OPERATOR = NetworkPolicyConfig(
    "kubelearn-system",
    {"app.kubernetes.io/name": "kubelearn", "app.kubernetes.io/instance": "kl"})


def _policy(**kwargs):
    return build_network_policy("linear", "ml", REF.owner_reference(), OPERATOR, **kwargs)


def test_policy_selects_the_experiment_pods_and_is_owned_by_it() -> None:
    policy = _policy()
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["kind"] == "NetworkPolicy"
    meta = policy["metadata"]
    assert meta["name"] == names.network_policy_name("linear") == "linear-kubelearn"
    assert meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [REF.owner_reference()]
    assert meta["labels"] == {names.LABEL_EXPERIMENT: "linear"}
    assert policy["spec"]["podSelector"] == {"matchLabels": {names.LABEL_EXPERIMENT: "linear"}}
    # Ingress only: egress (DNS, storage) stays open.
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_only_the_experiment_pods_reach_port_2222() -> None:
    rules = _policy()["spec"]["ingress"]
    on_2222 = [r for r in rules if {"protocol": "TCP", "port": 2222} in r["ports"]]
    assert len(on_2222) == 1
    assert on_2222[0]["ports"] == [{"protocol": "TCP", "port": 2222}]
    # A podSelector alone means: pods of the policy's own namespace with these labels.
    assert on_2222[0]["from"] == [
        {"podSelector": {"matchLabels": {names.LABEL_EXPERIMENT: "linear"}}}]


def test_only_the_operator_pods_reach_the_progress_port() -> None:
    rules = _policy()["spec"]["ingress"]
    on_2223 = [r for r in rules if {"protocol": "TCP", "port": 2223} in r["ports"]]
    assert len(on_2223) == 1
    assert on_2223[0]["ports"] == [{"protocol": "TCP", "port": 2223}]
    # namespaceSelector and podSelector in one peer: both must match (an AND).
    assert on_2223[0]["from"] == [{
        "namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kubelearn-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kubelearn",
                                        "app.kubernetes.io/instance": "kl"}},
    }]
    assert len(rules) == 2  # nothing else comes in


def test_names_and_labels_differ_per_experiment() -> None:
    other = build_network_policy("digits", "ml", REF.owner_reference(), OPERATOR)
    assert other["metadata"]["name"] == "digits-kubelearn"
    assert other["spec"]["podSelector"]["matchLabels"] == {names.LABEL_EXPERIMENT: "digits"}
    assert other["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        names.LABEL_EXPERIMENT: "digits"}


def test_extra_labels_and_ports() -> None:
    policy = _policy(labels={"team": "ml", names.LABEL_EXPERIMENT: "spoofed"},
                     port=3000, progress_port=3001)
    # The experiment label cannot be overridden by extra labels.
    assert policy["metadata"]["labels"] == {"team": "ml", names.LABEL_EXPERIMENT: "linear"}
    ports = [r["ports"][0]["port"] for r in policy["spec"]["ingress"]]
    assert ports == [3000, 3001]


def test_builder_returns_fresh_dicts() -> None:
    first, second = _policy(), _policy()
    first["spec"]["podSelector"]["matchLabels"]["x"] = "y"
    first["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"]["x"] = "y"
    assert "x" not in second["spec"]["podSelector"]["matchLabels"]
    assert "x" not in OPERATOR.operator_selector


@pytest.mark.parametrize(("operator", "match"), [
    (NetworkPolicyConfig("ns", {}), "operator_selector"),
    (NetworkPolicyConfig("", {"a": "b"}), "operator_namespace"),
])
def test_builder_refuses_an_operator_it_cannot_pin_down(operator, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_network_policy("linear", "ml", REF.owner_reference(), operator)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"port": 0}, "port must be a TCP port"),
    ({"progress_port": 70000}, "progress_port must be a TCP port"),
])
def test_builder_refuses_bad_ports(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        _policy(**kwargs)


def test_parse_selector() -> None:
    assert parse_selector("app.kubernetes.io/name=kubelearn, app.kubernetes.io/instance=kl") == {
        "app.kubernetes.io/name": "kubelearn", "app.kubernetes.io/instance": "kl"}
    assert parse_selector("") == {}
    assert parse_selector("a=") == {"a": ""}


@pytest.mark.parametrize("text", ["novalue", "=x", "a=b c", "bad key=x", "a=" + "x" * 64])
def test_parse_selector_names_the_setting(text) -> None:
    with pytest.raises(ValueError, match="KUBELEARN_OPERATOR_SELECTOR"):
        parse_selector(text)


def test_config_from_the_chart_environment() -> None:
    env = {"KUBELEARN_OPERATOR_NAMESPACE": "kubelearn-system",
           "KUBELEARN_OPERATOR_SELECTOR": "app.kubernetes.io/name=kubelearn,"
                                          "app.kubernetes.io/instance=kl"}
    assert network_policy_config(env) == OPERATOR
    assert network_policy_config({**env, "KUBELEARN_NETWORK_POLICY": "true"}) == OPERATOR


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "off"])
def test_config_turned_off(value) -> None:
    env = {"KUBELEARN_NETWORK_POLICY": value, "KUBELEARN_OPERATOR_NAMESPACE": "ns",
           "KUBELEARN_OPERATOR_SELECTOR": "a=b"}
    assert network_policy_config(env) is None


def test_config_off_when_the_operator_does_not_know_its_pods() -> None:
    # An operator started by hand, outside the chart.
    assert network_policy_config({}) is None


@pytest.mark.parametrize(("env", "match"), [
    ({"KUBELEARN_NETWORK_POLICY": "maybe"}, "KUBELEARN_NETWORK_POLICY must be true or false"),
    ({"KUBELEARN_OPERATOR_SELECTOR": "a=b"}, "KUBELEARN_OPERATOR_NAMESPACE must be set"),
    ({"KUBELEARN_OPERATOR_NAMESPACE": "ns"}, "KUBELEARN_OPERATOR_SELECTOR must be set"),
])
def test_config_errors_name_the_setting(env, match) -> None:
    with pytest.raises(ValueError, match=match):
        network_policy_config(env)
