import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.fake_gcs import fake_gcs  # noqa: F401  (fixture)
from tokenkit.training.checkpoint import Checkpointer, abstract_like


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def test_save_restore_state_and_data_position(tmp_path):
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:2])
    sharded = jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P("data")))
    state = {"step": jnp.int32(7), "params": {"w": sharded}, "rng": jax.random.key_data(jax.random.key(0))}
    it = _iterator()
    for _ in range(3):
        next(it)
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(7, state, it)
    expected_next = [next(it) for _ in range(2)]
    ckpt.wait()

    fresh = _iterator()
    restored = ckpt.restore(7, abstract_like(state), fresh)
    assert int(restored["step"]) == 7
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(8.0))
    assert restored["params"]["w"].sharding.spec == P("data")
    np.testing.assert_array_equal(restored["rng"], state["rng"])
    for batch in expected_next:
        np.testing.assert_array_equal(next(fresh), batch)
    ckpt.close()


def test_keeps_the_latest_n(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, {"x": jnp.float32(step)})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    assert ckpt.latest_step() == 3
    reopened = Checkpointer(tmp_path, keep=2)
    assert reopened.latest_step() == 3
    assert float(reopened.restore(3, {"x": jax.ShapeDtypeStruct((), jnp.float32)})["x"]) == 3.0
    ckpt.close()
    reopened.close()


def test_a_remote_workdir_saves_restores_and_deletes_there(fake_gcs):
    it = _iterator()
    next(it)
    ckpt = Checkpointer("gs://bucket/run", keep=1)
    assert str(ckpt.directory) == "gs://bucket/run/checkpoints"
    ckpt.save(1, {"x": jnp.arange(4.0)}, it)
    ckpt.save(2, {"x": jnp.arange(4.0) * 2}, it)
    expected = next(it)
    ckpt.close()
    assert sorted(p.name for p in (fake_gcs / "bucket" / "run" / "checkpoints").iterdir()) == ["2"]
    reopened = Checkpointer("gs://bucket/run")
    fresh = _iterator()
    restored = reopened.restore(2, {"x": jax.ShapeDtypeStruct((4,), jnp.float32)}, fresh)
    np.testing.assert_array_equal(restored["x"], np.arange(4.0) * 2)
    np.testing.assert_array_equal(next(fresh), expected)
    reopened.close()
