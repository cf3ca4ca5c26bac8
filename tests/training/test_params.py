import jax.numpy as jnp
import pytest

from tokenkit.training import params as P

TREE = {
    "model": {"layers": {"kernel": jnp.ones((2, 3))}, "embedder": {"embedding": jnp.ones((4, 3))}},
    "teacher": {"w": jnp.ones(2)},
}


def test_partition_and_merge_round_trip():
    mask = P.mask_from_rules(TREE, [("teacher/.*", False), ("model/embedder/.*", True)], default=False)
    trainable, frozen = P.partition(TREE, mask)
    assert list(trainable) == ["model"] and list(trainable["model"]) == ["embedder"]
    assert set(frozen) == {"model", "teacher"}
    merged = P.merge(trainable, frozen)
    assert P.count(merged) == P.count(TREE) == 6 + 12 + 2


def test_partition_by_predicate():
    selected, rest = P.partition(TREE, lambda path: path.startswith("teacher"))
    assert list(selected) == ["teacher"] and "teacher" not in rest


def test_rules_without_default_name_the_parameter():
    with pytest.raises(ValueError, match="model/layers/kernel"):
        P.mask_from_rules(TREE, [("teacher/.*", False), ("model/embedder/.*", True)])


def test_merge_refuses_overlap():
    with pytest.raises(ValueError, match="teacher/w"):
        P.merge(TREE, {"teacher": {"w": jnp.zeros(2)}})


def test_partition_mask_structure_must_match():
    with pytest.raises(ValueError, match="differ in structure"):
        P.partition(TREE, {"model": {"layers": {"kernel": True}}})
