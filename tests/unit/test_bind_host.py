"""Which address a ps binds: KUBELEARN_BIND_HOST for DNS names, the literal IP otherwise."""

import pytest

from kubelearn.distributed.server import ENV_BIND_HOST, bind_address


def test_dns_name_binds_every_interface_without_bind_host(monkeypatch):
    monkeypatch.delenv(ENV_BIND_HOST, raising=False)
    assert bind_address("exp-ps-0.ns.svc:2222") == "tcp://*:2222"


def test_dns_name_binds_the_bind_host_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_BIND_HOST, "127.0.0.7")
    assert bind_address("exp-ps-0.ns.svc:2222") == "tcp://127.0.0.7:2222"


def test_ipv6_bind_host(monkeypatch):
    monkeypatch.setenv(ENV_BIND_HOST, "::1")
    assert bind_address("exp-ps-0.ns.svc:2222") == "tcp://[::1]:2222"


def test_ip_literal_address_wins_over_bind_host(monkeypatch):
    monkeypatch.setenv(ENV_BIND_HOST, "127.0.0.7")
    assert bind_address("127.0.0.3:4000") == "tcp://127.0.0.3:4000"


def test_bad_bind_host_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_BIND_HOST, "not-an-ip")
    with pytest.raises(ValueError, match=ENV_BIND_HOST):
        bind_address("exp-ps-0.ns.svc:2222")
