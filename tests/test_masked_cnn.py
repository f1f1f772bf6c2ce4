"""The masked (vmap) CNN executor: same weights give the exact child's logits, masked weights stay
zero, m children together equal each alone, the init matches the exact child's, a tiny search step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nas_jax.training import child, data, masked_children, optim
from nas_jax.spaces import masked_cnn
from nas_jax.spaces import CNNArch, CNNSpace, Layer
from nas_jax.spaces.cnn import CNNChild

NUM_CLASSES = 5
FAST = child.TrainConfig(epochs=1, batch_size=8, fast_compile=True)


def _l(fh, fw, nf, inputs=()):
  return Layer(fh, fw, 1, 1, nf, tuple(inputs))


# Skip connections, a layer with no inputs (2), unconsumed layers, inputs out of order.
SPACE_A = CNNSpace(filter_heights=(1, 3, 5), filter_widths=(1, 3), num_filters=(2, 4, 6))
ARCHS_A = [
    CNNArch((_l(3, 1, 4), _l(5, 3, 2, [0]), _l(1, 3, 6), _l(3, 3, 4, [0, 2]))),
    CNNArch((_l(5, 3, 6), _l(1, 1, 2, [0]), _l(3, 3, 4, [1, 0]), _l(5, 1, 2, [2, 1]))),
]
# Two convs per layer and a pool after layer 1 on a 7x6 image (pooled to 4x3): a layer reading
# only the pooled layer is 4x3 on a 7x6 canvas; inputs and classifier features of mixed sizes.
SPACE_B = CNNSpace(filter_heights=(1, 3), filter_widths=(3, 5), num_filters=(3, 5),
                   convs_per_layer=2, pool_after_layers=(1,))
ARCHS_B = [
    CNNArch((_l(3, 3, 5), _l(1, 5, 3, [0]), _l(3, 3, 5, [1]), _l(1, 3, 3, [0])), 2, (1,)),
    CNNArch((_l(1, 5, 3), _l(3, 3, 5, [0]), _l(3, 5, 3, [1]), _l(3, 3, 5, [0, 2])), 2, (1,)),
    CNNArch((_l(3, 5, 5), _l(3, 3, 3, [0]), _l(1, 3, 3, [1]), _l(3, 3, 5, [2])), 2, (1,)),
]
# No skip connections: a chain.
SPACE_C = CNNSpace(filter_heights=(3,), filter_widths=(1, 3), num_filters=(2, 3),
                   skip_connections=False)
ARCHS_C = [CNNArch((_l(3, 1, 2), _l(3, 3, 3, [0]), _l(3, 1, 2, [1])))]

CASES = {"a": (SPACE_A, ARCHS_A, (8, 8, 2)), "b": (SPACE_B, ARCHS_B, (7, 6, 1)),
         "c": (SPACE_C, ARCHS_C, (6, 6, 3))}


def _jit(fn, **static):
  """jax.jit at XLA's optimisation level 0: these tests compile more than they run."""
  return jax.jit(functools.partial(fn, **static) if static else fn,
                 compiler_options={"xla_backend_optimization_level": 0})


def _random_variables(model, x, seed):
  """Random variables of ``model`` (BatchNorm parameters and running statistics included), drawn
  with numpy: compiling flax's initialisers takes seconds."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = path[-1].key
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    scale = 0.3 if name in ("bias", "mean") else 1 / np.sqrt(np.prod(s.shape[:-1]))
    return (scale * rng.standard_normal(s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), x))


def _exact_child(arch, x, seed):
  """Random variables of CNNChild(arch) and its (eval logits, train logits, train batch_stats)."""
  model = CNNChild(arch, NUM_CLASSES)
  variables = _random_variables(model, x, seed)

  def run(variables):
    train_logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return model.apply(variables, x), train_logits, state["batch_stats"]
  return (variables,) + _jit(run)(variables)


@pytest.mark.parametrize("case", sorted(CASES))
def test_embedded_exact_child_gives_the_same_logits_and_batch_stats(case):
  space, archs, shape = CASES[case]
  net = masked_cnn.MaskedCNN(space, len(archs[0].layers), shape, NUM_CLASSES,
                             conv_batching="grouped" if case == "c" else "unrolled")
  x = jax.random.normal(jax.random.key(0), (4,) + shape)
  exact = [_exact_child(a, x, i + 1) for i, a in enumerate(archs)]
  embedded = [net.embed_exact_variables(a, e[0]) for a, e in zip(archs, exact)]
  params, stats = jax.tree.map(lambda *v: np.stack(v), *embedded)
  marcs = masked_cnn.stack_archs([net.encode(a) for a in archs])

  def both_modes(params, stats, marc, x):
    return net.apply(params, stats, marc, x)[0], net.apply(params, stats, marc, x, train=True)
  logits, (train_logits, new_stats) = _jit(jax.vmap(both_modes, in_axes=(0, 0, 0, None)))(
      params, stats, marcs, x)
  for k, (_, want, want_train, want_stats) in enumerate(exact):
    np.testing.assert_allclose(logits[k], want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(train_logits[k], want_train, atol=1e-4, rtol=1e-4)
    for name, s in want_stats.items():
      nf = s["mean"].shape[0]
      for stat in ("mean", "var"):
        np.testing.assert_allclose(new_stats[name][stat][k, :nf], s[stat], atol=1e-5, rtol=1e-4)


def test_invalid_spaces_and_archs_raise():
  with pytest.raises(ValueError, match="child.executor=exact"):
    masked_cnn.MaskedCNN(CNNSpace(predict_strides=True), 2, (8, 8, 1), 10)
  with pytest.raises(ValueError, match="search_space.filter_widths"):
    masked_cnn.MaskedCNN(CNNSpace(filter_widths=(1, 2, 3)), 2, (8, 8, 1), 10)
  with pytest.raises(ValueError, match="search_space.filter_heights"):
    masked_cnn.MaskedCNN(CNNSpace(filter_heights=(4,)), 2, (8, 8, 1), 10)
  net = masked_cnn.MaskedCNN(SPACE_A, 4, (8, 8, 2), NUM_CLASSES)
  with pytest.raises(ValueError, match="layers"):
    net.encode(CNNArch(ARCHS_A[0].layers[:3]))
  with pytest.raises(ValueError, match="strides"):
    net.encode(CNNArch(ARCHS_A[0].layers[:3] + (Layer(3, 3, 2, 1, 4, (0,)),)))


def test_masks_encode_the_architecture():
  net = masked_cnn.MaskedCNN(SPACE_B, 4, (7, 6, 1), NUM_CLASSES)
  marc = net.encode(ARCHS_B[1])
  np.testing.assert_array_equal(marc.kernel_masks[0], [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1],
                                                       [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(marc.channel_masks, [[1, 1, 1, 0, 0], [1] * 5, [1, 1, 1, 0, 0],
                                                     [1] * 5])
  np.testing.assert_array_equal(marc.connections, [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0],
                                                   [0, 0, 1, 0, 0], [0, 1, 0, 1, 0]])
  np.testing.assert_array_equal(marc.classifier_mask, [0, 0, 0, 1])
  np.testing.assert_array_equal(marc.conv_sizes, [[7, 6], [7, 6], [4, 3], [7, 6]])
  np.testing.assert_array_equal(marc.out_sizes, [[7, 6], [4, 3], [4, 3], [7, 6]])
  # The active entries of the masks are the exact child's parameters.
  for arch in ARCHS_A + ARCHS_B:
    space, shape = (SPACE_A, (8, 8, 2)) if arch in ARCHS_A else (SPACE_B, (7, 6, 1))
    net = masked_cnn.MaskedCNN(space, 4, shape, NUM_CLASSES)
    shapes = jax.eval_shape(CNNChild(arch, NUM_CLASSES).init, jax.random.key(0),
                            jnp.zeros((1,) + shape))["params"]
    want = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    got = sum(float(jnp.sum(m)) for m in jax.tree.leaves(net.param_masks(net.encode(arch))))
    assert got == want == masked_cnn.exact_param_count(arch, shape[2], NUM_CLASSES)


def _images(seed, n, shape):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n,) + shape).astype(np.float32),
          rng.integers(0, NUM_CLASSES, n).astype(np.int32))


@pytest.fixture(scope="module")
def trained_b():
  """ARCHS_B trained 4 steps together (m=3) and each alone (m=1), same keys and batches."""
  net = masked_cnn.MaskedCNN(SPACE_B, 4, (7, 6, 1), NUM_CLASSES)
  progs = masked_children.programs(net, FAST, False)
  x, y = _images(0, 32, (7, 6, 1))
  idx = np.stack([np.random.default_rng(k).permutation(32)[:8 * 4].reshape(4, 8)
                  for k in range(3)])           # M x steps x B
  keys = jax.random.split(jax.random.key(1), 3)
  marcs = masked_cnn.stack_archs([net.encode(a) for a in ARCHS_B])

  def train(sel):
    sub = jax.tree.map(lambda a: a[sel], marcs)
    params, stats, opt = progs.init(keys[sel], sub)
    init = jax.tree.map(np.array, params)
    losses = []
    for s in range(4):
      params, stats, opt, loss = progs.train_step(params, stats, opt, sub, x, y, idx[sel, s],
                                                  keys[sel], s)
      losses.append(loss)
    return init, params, opt, np.stack(losses, 1), sub
  together = train(np.arange(3))
  alone = [train(np.array([k])) for k in range(3)]
  return net, together, alone


def test_masked_weights_stay_exactly_zero(trained_b):
  net, (init, params, opt, losses, marcs), _ = trained_b
  masks = jax.vmap(net.param_masks)(marcs)
  trace = optax.tree_utils.tree_get(opt, "trace")   # the momentum
  for tree in (init, params, trace):
    leaks = jax.tree.map(lambda v, m: bool(np.any(np.asarray(v)[np.asarray(m) == 0] != 0.0)),
                         tree, masks)
    assert not any(jax.tree.leaves(leaks)), leaks
  # ... while the active entries did train.
  moved = np.asarray(params["Conv_0"]["kernel"] != init["Conv_0"]["kernel"])
  assert np.all(moved[np.asarray(masks["Conv_0"]["kernel"]) == 1])
  assert np.all(np.isfinite(losses)) and not np.allclose(losses[:, 0], losses[:, -1])


def test_vmapped_children_equal_children_trained_alone(trained_b):
  _, (_, params, _, losses, _), alone = trained_b
  for k, (_, p, _, l, _) in enumerate(alone):
    np.testing.assert_allclose(losses[k], l[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p)):
      np.testing.assert_allclose(a[k], b[0], rtol=1e-4, atol=1e-6)


def test_init_matches_the_exact_childs_distribution():
  arch = CNNArch((_l(3, 1, 6), _l(5, 3, 6, [0]), _l(1, 3, 6), _l(3, 3, 6, [0, 1, 2])))
  net = masked_cnn.MaskedCNN(SPACE_A, 4, (8, 8, 2), NUM_CLASSES)
  marc = net.encode(arch)
  keys = jax.random.split(jax.random.key(0), 16)
  params, _ = _jit(jax.vmap(net.init, in_axes=(0, None)))(keys, marc)
  masks = net.param_masks(marc)
  x = jnp.zeros((1, 8, 8, 2))
  exact = _jit(jax.vmap(CNNChild(arch, NUM_CLASSES).init, in_axes=(0, None)))(keys, x)["params"]
  fan_ins = {"Conv_0": 3 * 1 * 2, "Conv_1": 5 * 3 * 6, "Conv_2": 1 * 3 * 2,
             "Conv_3": 3 * 3 * 18, "Dense_0": 6}
  for name, fan_in in fan_ins.items():
    active = np.asarray(params[name]["kernel"])[:, np.asarray(masks[name]["kernel"]) == 1]
    want = np.ravel(exact[name]["kernel"])
    assert active.size == want.size
    # Truncated-normal LeCun init: variance 1 / fan_in, values within 2 / 0.8796 std.
    assert np.std(active) == pytest.approx(np.sqrt(1 / fan_in), rel=0.1)
    assert np.std(active) == pytest.approx(np.std(want), rel=0.1)
    assert np.max(np.abs(active)) <= 2 / 0.8796 * np.sqrt(1 / fan_in) + 1e-6
  assert np.all(np.asarray(params["BatchNorm_1"]["scale"]) == 1.0)  # 6 of 6 filters active
  assert np.all(np.asarray(params["Dense_0"]["bias"]) == 0.0)


@pytest.mark.slow
def test_training_from_embedded_exact_init_tracks_the_exact_child():
  """Embedded exact init + the same batches: the masked child trains like the exact child."""
  arch, shape = ARCHS_B[0], (7, 6, 1)
  net = masked_cnn.MaskedCNN(SPACE_B, 4, shape, NUM_CLASSES)
  x, y = _images(2, 32, shape)
  model = CNNChild(arch, NUM_CLASSES)
  ex = child._programs(model, FAST, False)  # pylint: disable=protected-access
  variables = _random_variables(model, x[:1], 3)
  ex_params, ex_stats = variables["params"], variables["batch_stats"]
  ex_opt = optim.child_optimizer(FAST).init(ex_params)
  params, stats = net.embed_exact_variables(arch, variables)
  progs = masked_children.programs(net, FAST, False)
  stack = lambda t: jax.tree.map(lambda a: jnp.asarray(a)[None], t)
  params, stats = stack(params), stack(stats)
  opt = jax.vmap(optim.child_optimizer(FAST).init)(params)
  marcs = masked_cnn.stack_archs([net.encode(arch)])
  key = jax.random.key(4)
  for s in range(4):
    idx = np.random.default_rng(s).permutation(32)[:8]
    ex_params, ex_stats, ex_opt, ex_loss = ex.train_step(ex_params, ex_stats, ex_opt, None, x, y,
                                                         idx, key, s)
    params, stats, opt, loss = progs.train_step(params, stats, opt, marcs, x, y, idx[None],
                                                key[None], s)
    np.testing.assert_allclose(loss[0], ex_loss, rtol=1e-4)
  want = model.apply({"params": ex_params, "batch_stats": ex_stats}, jnp.asarray(x))
  got, _ = net.apply(jax.tree.map(lambda a: a[0], params), jax.tree.map(lambda a: a[0], stats),
                     jax.tree.map(lambda a: a[0], marcs), jnp.asarray(x))
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


SPACE_D = CNNSpace(filter_heights=(1, 3), filter_widths=(1, 3), num_filters=(2, 4))
ARCHS_D = [CNNArch((_l(3, 3, 4), _l(3, 1, 4, [0]))),
           CNNArch((_l(1, 1, 2), _l(3, 3, 2))),
           CNNArch((_l(3, 3, 2), _l(1, 3, 4, [0])))]
CFG_D = child.TrainConfig(epochs=3, batch_size=16, reward_last_epochs=2, eval_batch_size=20,
                          fast_compile=True)


@pytest.fixture(scope="module")
def halves():
  """6x6 images, class 1 when the top half is brighter than the bottom half."""
  rng = np.random.default_rng(0)

  def split(n):
    y = rng.integers(0, 2, n).astype(np.int32)
    x = 0.5 * rng.standard_normal((n, 6, 6, 1)).astype(np.float32)
    x[:, :3] += np.where(y, 1.0, -1.0)[:, None, None, None]
    return x, y
  (tx, ty), (vx, vy) = split(96), split(50)
  return data.Dataset("halves", tx, ty, vx, vy, vx, vy, 2, False)


def test_evaluate_masked_trains_and_returns_results_in_order(halves):
  keys = [jax.random.key(10 + i) for i in range(3)]
  misses = masked_children.programs.cache_info().misses
  res = masked_children.evaluate_masked(SPACE_D, ARCHS_D, halves, CFG_D, keys)
  again = masked_children.evaluate_masked(SPACE_D, ARCHS_D[::-1], halves, CFG_D, keys[::-1])
  assert masked_children.programs.cache_info().misses == misses + 1  # one program for the depth
  for r, arch in zip(res, ARCHS_D):
    assert not r.failed, r.error
    assert len(r.metrics["val_accuracies"]) == 3
    assert r.metrics["val_accuracy"] > 0.8   # chance is 0.5
    assert r.reward == pytest.approx(max(r.metrics["val_accuracies"][-2:]) ** 3)
    assert r.param_count == masked_cnn.exact_param_count(arch, 1, 2)
  assert len({r.param_count for r in res}) == 3
  # Same key -> same child, whatever its place among its neighbours.
  for r, s in zip(res, again[::-1]):
    np.testing.assert_allclose(r.metrics["val_accuracies"], s.metrics["val_accuracies"], atol=1e-6)
  with pytest.raises(ValueError, match="one depth"):
    masked_children.evaluate_masked(SPACE_D, ARCHS_D + [CNNArch((_l(1, 1, 2),))], halves,
                                    CFG_D, keys + keys[:1])


def test_a_diverging_child_fails_alone(halves, monkeypatch):
  keys = [jax.random.key(10 + i) for i in range(3)]
  clean = masked_children.evaluate_masked(SPACE_D, ARCHS_D, halves, CFG_D, keys)
  real = masked_children.programs

  def poisoned(*args):
    progs = real(*args)

    def init(k, marcs):
      params, stats, opt = progs.init(k, marcs)
      params["Dense_0"]["bias"] = params["Dense_0"]["bias"].at[1].set(jnp.nan)
      return params, stats, opt
    return progs._replace(init=init)
  monkeypatch.setattr(masked_children, "programs", poisoned)
  res = masked_children.evaluate_masked(SPACE_D, ARCHS_D, halves, CFG_D, keys)
  assert res[1].failed and res[1].reward == 0.0 and "loss became nan" in res[1].error
  for k in (0, 2):
    assert not res[k].failed
    assert res[k].metrics["val_accuracies"] == clean[k].metrics["val_accuracies"]


@pytest.mark.slow
def test_evaluate_masked_equals_child_evaluate_from_the_same_init(halves, monkeypatch):
  """Started from the exact children's initial variables, the masked executor reproduces
  child.evaluate: same data order, updates, validation accuracies and parameter counts."""
  archs, keys = ARCHS_D[:2], [jax.random.key(20 + i) for i in range(2)]
  # Shuffled training labels: validation accuracies near chance that any difference would move.
  halves = halves._replace(train_labels=np.random.default_rng(1).permutation(halves.train_labels))
  want = [child.evaluate(SPACE_D.build(a, 2), halves, CFG_D, k) for a, k in zip(archs, keys)]
  net = masked_cnn.MaskedCNN(SPACE_D, 2, (6, 6, 1), 2)
  embedded = []
  for arch, key in zip(archs, keys):
    ex = child._programs(SPACE_D.build(arch, 2), CFG_D, False)  # pylint: disable=protected-access
    p, s, _ = ex.init(jax.random.split(key, 3)[0], jnp.asarray(halves.train_images[:1]))
    embedded.append(net.embed_exact_variables(arch, {"params": p, "batch_stats": s}))
  params, stats = jax.tree.map(lambda *v: np.stack(v), *embedded)
  real = masked_children.programs

  def from_exact_init(*args):
    progs = real(*args)

    def init(k, marcs):
      _, _, opt = progs.init(k, marcs)   # zero momentum
      return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, stats), opt
    return progs._replace(init=init)
  monkeypatch.setattr(masked_children, "programs", from_exact_init)
  got = masked_children.evaluate_masked(SPACE_D, archs, halves, CFG_D, keys)
  for g, w in zip(got, want):
    assert not g.failed and g.param_count == w.param_count
    np.testing.assert_allclose(g.metrics["val_accuracies"], w.metrics["val_accuracies"],
                               atol=0.021)  # 1 of 50
    assert g.reward == pytest.approx(w.reward, abs=0.07)
