"""The node agent expands ``$(VAR)`` in env values as a kubelet does (large experiments'
TF_CONFIG refers to a cluster spec held in a ConfigMap this way)."""

from tests.e2e.nodeagent import expand_refs


def test_earlier_variables_expand_and_double_dollar_escapes():
    defined = {"KUBELEARN_CLUSTER_SPEC": '{"ps": ["a:2222"]}'}
    value = '{"cluster": $(KUBELEARN_CLUSTER_SPEC), "task": {"type": "ps", "index": 0}}'
    assert expand_refs(value, defined) == \
        '{"cluster": {"ps": ["a:2222"]}, "task": {"type": "ps", "index": 0}}'
    assert expand_refs("$$(KUBELEARN_CLUSTER_SPEC)", defined) == "$(KUBELEARN_CLUSTER_SPEC)"
    assert expand_refs("$(UNKNOWN) and $x", defined) == "$(UNKNOWN) and $x"
