"""A spike (one to three points outside the expected band) is shown, not fixed: a rule
acts on it only when it names ``reason: spike``."""

from __future__ import annotations

from runbooks.policy import load_policy, parse_inline


def test_a_rule_without_a_reason_does_not_act_on_a_spike_alone():
    policy = load_policy("latency_p99=scale_up:+1", None)
    assert policy.match("latency_p99", ["spike"], "shop", "checkout") is None
    # a spike together with a reason that is not passive still acts
    rule = policy.match("latency_p99", ["spike", "level_shift"], "shop", "checkout")
    assert rule is not None and rule.action == "scale_up"
    # as does an anomaly (or an Alertmanager notification) that names no reason
    assert policy.match("latency_p99", [], "shop", "checkout") is not None


def test_a_rule_that_names_spike_acts_on_it():
    (rule,) = parse_inline("latency_p99:spike=scale_up:+1")
    assert rule.matches("latency_p99", ["spike"])
    assert not rule.matches("latency_p99", ["level_shift"])


def test_a_policy_file_rule_can_name_spike(tmp_path):
    path = tmp_path / "policy.yml"
    path.write_text(
        "shop.checkout:\n"
        "  - match: latency_p99\n"
        "    reason: spike\n"
        "    action: scale_up\n"
        "    params: {delta: 1}\n"
    )
    policy = load_policy(None, path)
    assert policy.match("latency_p99", ["spike"], "shop", "checkout") is not None
    assert policy.match("latency_p99", ["level_shift"], "shop", "checkout") is None
