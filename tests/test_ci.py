"""The CI gate's arithmetic, and the committed reference it compares against."""
from __future__ import annotations

import json

import yaml

from finsent.pipeline.ci import OVERRIDES, REFERENCE, TOLERANCE, ci_params, macro_f1_drops


def test_gate_fails_only_beyond_tolerance():
    ref = {"encoder": {"fpb": {"macro_f1": 0.80}, "tweets": {"macro_f1": 0.70}}}
    assert macro_f1_drops(ref, {"encoder": {"fpb": {"macro_f1": 0.80 - TOLERANCE + 0.001},
                                            "tweets": {"macro_f1": 0.95}}}) == []
    drops = macro_f1_drops(ref, {"encoder": {"fpb": {"macro_f1": 0.70}, "tweets": {"macro_f1": 0.70}}})
    assert len(drops) == 1 and drops[0].startswith("encoder/fpb")
    assert "missing" in macro_f1_drops(ref, {"encoder": {"fpb": {"macro_f1": 0.8}}})[0]


def test_reference_matches_the_ci_configuration(root):
    """ci/reference must come from the current CI overrides (refresh: python -m finsent.pipeline.ci update)."""
    overrides = yaml.safe_load((root / OVERRIDES).read_text())
    reference = yaml.safe_load((root / REFERENCE / "params.yaml").read_text())
    def leaves(tree, prefix=()):
        for key, value in tree.items():
            yield from leaves(value, prefix + (key,)) if isinstance(value, dict) else [(prefix + (key,), value)]

    for path, value in leaves(overrides):
        node = reference
        for key in path:
            node = node[key]
        assert node == value, ".".join(path)
    current = ci_params(root)
    assert set(json.loads((root / REFERENCE / "evaluate.json").read_text())) == set(current["evaluate"]["models"])
