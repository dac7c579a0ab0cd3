"""Operator settings from the environment."""

from __future__ import annotations

import pytest

from kubelearn_operator.settings import Settings


def test_defaults_and_overrides() -> None:
    assert Settings.from_env({}).image == "kubelearn/runner:0.1.0"
    settings = Settings.from_env({"KUBELEARN_RUNNER_IMAGE": "r:2", "KUBELEARN_API_QPS": "50",
                                  "KUBELEARN_API_BURST": "80",
                                  "KUBELEARN_CREATE_CONCURRENCY": "8",
                                  "KUBELEARN_CLUSTER_DOMAIN": "cluster.local"})
    assert (settings.image, settings.api_qps, settings.api_burst, settings.create_concurrency,
            settings.cluster_domain) == ("r:2", 50.0, 80, 8, "cluster.local")


def test_a_bad_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="KUBELEARN_API_QPS must be a number"):
        Settings.from_env({"KUBELEARN_API_QPS": "fast"})


def test_network_policy_settings() -> None:
    assert Settings.from_env({}).network_policy is None  # run by hand: off
    settings = Settings.from_env({"KUBELEARN_OPERATOR_NAMESPACE": "ops",
                                  "KUBELEARN_OPERATOR_SELECTOR": "app=kubelearn"})
    assert settings.network_policy is not None
    assert settings.network_policy.operator_namespace == "ops"
    assert Settings.from_env({"KUBELEARN_NETWORK_POLICY": "false",
                              "KUBELEARN_OPERATOR_NAMESPACE": "ops",
                              "KUBELEARN_OPERATOR_SELECTOR": "app=kubelearn"}
                             ).network_policy is None


def test_wire_encryption_is_off_unless_asked_for() -> None:
    import pytest

    from kubelearn_operator.settings import Settings

    assert Settings.from_env({}).encrypt_wire is False
    assert Settings.from_env({"KUBELEARN_WIRE_ENCRYPTION": "none"}).encrypt_wire is False
    assert Settings.from_env({"KUBELEARN_WIRE_ENCRYPTION": "curve"}).encrypt_wire is True
    with pytest.raises(ValueError, match="KUBELEARN_WIRE_ENCRYPTION"):
        Settings.from_env({"KUBELEARN_WIRE_ENCRYPTION": "tls"})


def test_runner_image_pull_policy_is_one_of_kubernetes_or_unset() -> None:
    assert Settings.from_env({}).image_pull_policy is None
    env = {"KUBELEARN_RUNNER_IMAGE_PULL_POLICY": "Never"}
    assert Settings.from_env(env).image_pull_policy == "Never"
    with pytest.raises(ValueError, match="KUBELEARN_RUNNER_IMAGE_PULL_POLICY must be one of"):
        Settings.from_env({"KUBELEARN_RUNNER_IMAGE_PULL_POLICY": "never"})


def test_every_field_is_a_setting_and_every_setting_is_documented() -> None:
    import dataclasses

    from kubelearn_operator import settings as module
    from kubelearn_operator.settings import SETTINGS

    assert [s.field for s in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]
    assert Settings.from_env({}) == Settings()
    for setting in SETTINGS:
        assert getattr(Settings(), setting.field) == setting.default
        for variable in setting.variables:
            assert variable in module.__doc__
    assert "KUBELEARN_WIRE_ENCRYPTION" in module.__doc__
    assert "KUBELEARN_LIVENESS_ENDPOINT" in module.__doc__


def test_liveness_endpoint_empty_means_none() -> None:
    from kubelearn_operator.settings import read

    assert Settings().liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert read("liveness_endpoint", {}) == "http://0.0.0.0:8080/healthz"
    assert read("liveness_endpoint", {"KUBELEARN_LIVENESS_ENDPOINT": ""}) == ""
    env = {"KUBELEARN_LIVENESS_ENDPOINT": "http://127.0.0.1:1/h"}
    assert Settings.from_env(env).liveness_endpoint == "http://127.0.0.1:1/h"


def test_a_whole_number_setting_drops_a_fraction_as_before() -> None:
    assert Settings.from_env({"KUBELEARN_WORKERS": "3.7"}).workers == 3
    assert Settings.from_env({"KUBELEARN_RESYNC_SECONDS": "2.5"}).resync_seconds == 2.5
    with pytest.raises(ValueError, match=r"^KUBELEARN_WORKERS must be a number, got 'x'$"):
        Settings.from_env({"KUBELEARN_WORKERS": "x"})
