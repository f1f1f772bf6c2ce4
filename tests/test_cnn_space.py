"""Tests for the CNN search space (nas_jax.spaces.cnn): decisions, plan, depth schedule,
decoding, the paper's three compile-failure rules on built models, the v3 variant, describe/JSON.

Built models are checked through their parameter shapes (a conv kernel is (kh, kw, in, out), so
its ``in`` says what the layer consumed) and Flax's captured intermediates (conv output sizes).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.spaces import CNNArch, CNNSpace, Layer, base, make_space
from nas_jax.spaces.cnn import arch_from_json, concat_padded

IMAGES = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))   # batch 2 of 8x8, 3 channels


def _init(arch, num_classes=10, execute=False):
  """(params, logits, intermediates) of the built child on IMAGES (inference mode).

  By default only shapes are computed (``jax.eval_shape``: tracing, no compilation); with
  ``execute`` the network really runs.
  """
  model = CNNSpace().build(arch, num_classes)

  def run(key, x):
    variables = model.init(key, x)
    logits, state = model.apply(variables, x, capture_intermediates=True)
    return variables["params"], logits, state["intermediates"]

  if execute:
    return jax.jit(run)(jax.random.key(1), IMAGES)
  return jax.eval_shape(run, jax.random.key(1), IMAGES)


def _conv_out_shape(inter, i):
  return inter[f"Conv_{i}"]["__call__"][0].shape


# ----------------------------------------------------------------------------------------------
# decisions, plan, depth schedule


def test_decisions_and_plan_without_strides():
  space = CNNSpace()
  assert [(d.name, d.num_choices) for d in space.decisions] == [
      ("filter_height", 4), ("filter_width", 4), ("num_filters", 4)]
  plan = space.plan(6)
  assert len(plan) == 6 * 4
  anchors = [s for s in plan if s.kind == base.ANCHOR]
  assert [s.layer for s in anchors] == [0, 1, 2, 3, 4, 5]
  assert base.num_tokens(plan) == 6 * 3 + (0 + 1 + 2 + 3 + 4 + 5) == 33
  # token order per layer: height, width, filters, then the anchor
  assert plan[:4] == (base.choice(0), base.choice(1), base.choice(2), base.anchor(0))


def test_decisions_and_plan_with_strides_and_without_skips():
  strided = CNNSpace(predict_strides=True)
  assert [d.name for d in strided.decisions] == [
      "filter_height", "filter_width", "stride_height", "stride_width", "num_filters"]
  assert [d.num_choices for d in strided.decisions] == [4, 4, 3, 3, 4]
  assert base.num_tokens(strided.plan(6)) == 6 * 5 + 15 == 45
  chain = CNNSpace(skip_connections=False)
  assert all(s.kind == base.CHOICE for s in chain.plan(6))
  assert base.num_tokens(chain.plan(6)) == 18
  custom = CNNSpace(filter_heights=(2, 4), num_filters=(8, 16, 32))
  assert [d.num_choices for d in custom.decisions] == [2, 4, 3]


def test_depth_schedule():
  space = CNNSpace()
  assert space.num_layers(0) == 6
  assert space.num_layers(1599) == 6
  assert space.num_layers(1600) == 8
  assert space.num_layers(3199) == 8
  assert space.num_layers(3200) == 10
  assert space.num_layers(12800) == 6 + 2 * 8   # the paper's whole CIFAR-10 search
  capped = CNNSpace(max_layers=8)
  assert [capped.num_layers(n) for n in (0, 1600, 3200, 100000)] == [6, 8, 8, 8]
  custom = CNNSpace(start_layers=4, layers_increment=3, increment_every=100)
  assert [custom.num_layers(n) for n in (0, 99, 100, 250)] == [4, 4, 7, 10]


def test_make_space_from_config_fields():
  space = make_space({"name": "cnn", "num_filters": [6, 12], "predict_strides": True,
                      "pool_after_layers": [1]})
  assert space == CNNSpace(num_filters=(6, 12), predict_strides=True, pool_after_layers=(1,))
  hash(space)   # a static jit argument elsewhere: must be hashable
  with pytest.raises(ValueError, match="unknown space"):
    make_space({"name": "rnn"})


# ----------------------------------------------------------------------------------------------
# decode


def test_decode_hand_written_tokens():
  space = CNNSpace()
  plan = space.plan(3)
  #         fh fw nf | fh fw nf bit(0) | fh fw nf bits(0, 1)
  tokens = [2, 0, 3, 1, 3, 0, 1, 3, 2, 1, 0, 1]
  arch = space.decode(plan, np.array(tokens, np.int32))
  assert arch == CNNArch(layers=(
      Layer(5, 1, 1, 1, 64, ()),
      Layer(3, 7, 1, 1, 24, (0,)),
      Layer(7, 5, 1, 1, 36, (1,)),
  ), convs_per_layer=1, pool_after_layers=())
  # both bits on: two inputs
  arch = space.decode(plan, [2, 0, 3, 1, 3, 0, 0, 3, 2, 1, 1, 1])
  assert arch.layers[1].inputs == () and arch.layers[2].inputs == (0, 1)
  with pytest.raises(ValueError):
    space.decode(plan, tokens[:-1])


def test_decode_with_strides():
  space = CNNSpace(predict_strides=True)
  #         fh fw sh sw nf | fh fw sh sw nf bit
  tokens = [1, 2, 1, 2, 0, 0, 0, 0, 1, 3, 1]
  arch = space.decode(space.plan(2), tokens)
  assert arch.layers == (Layer(3, 5, 2, 3, 24, ()), Layer(1, 1, 1, 2, 64, (0,)))


def test_decode_without_skip_connections_chains_layers():
  space = CNNSpace(skip_connections=False, filter_heights=(1, 2, 3), num_filters=(5, 6, 7))
  arch = space.decode(space.plan(3), [0, 0, 0, 1, 1, 1, 2, 2, 2])
  assert arch.layers == (Layer(1, 1, 1, 1, 5, ()), Layer(2, 3, 1, 1, 6, (0,)),
                         Layer(3, 5, 1, 1, 7, (1,)))
  assert arch.unconsumed() == (2,)


# ----------------------------------------------------------------------------------------------
# the three compile-failure rules (Section 3.3)


def test_rule1_layer_without_inputs_takes_the_image():
  arch = CNNArch((Layer(3, 3, 1, 1, 4, ()), Layer(1, 1, 1, 1, 6, (0,)), Layer(3, 5, 1, 1, 5, ())))
  params, logits, _ = _init(arch)
  assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 4)   # image: 3 channels
  assert params["Conv_1"]["kernel"].shape == (1, 1, 4, 6)   # layer 0: 4 filters
  assert params["Conv_2"]["kernel"].shape == (3, 5, 3, 5)   # no inputs -> the image again
  assert logits.shape == (2, 10)


def test_rule2_unconsumed_layers_feed_the_classifier():
  chain = CNNArch((Layer(1, 1, 1, 1, 4, ()), Layer(1, 1, 1, 1, 6, (0,)),
                   Layer(1, 1, 1, 1, 5, (1,))))
  assert chain.unconsumed() == (2,)
  parallel = CNNArch((Layer(1, 1, 1, 1, 4, ()), Layer(1, 1, 1, 1, 6, ()),
                      Layer(1, 1, 1, 1, 5, ())))
  assert parallel.unconsumed() == (0, 1, 2)
  mixed = CNNArch((Layer(1, 1, 1, 1, 4, ()), Layer(3, 3, 1, 1, 6, (0,)),
                   Layer(3, 3, 1, 1, 5, (0,))))
  assert mixed.unconsumed() == (1, 2)
  skip = CNNArch((Layer(1, 1, 1, 1, 4, ()), Layer(3, 3, 1, 1, 6, ()),
                  Layer(3, 3, 1, 1, 5, (0,)), Layer(1, 1, 1, 1, 7, (2,))))
  assert skip.unconsumed() == (1, 3)
  for arch, dense_in in ((chain, 5), (parallel, 4 + 6 + 5), (mixed, 6 + 5), (skip, 6 + 7)):
    params, logits, _ = _init(arch, num_classes=7)
    assert params["Dense_0"]["kernel"].shape == (dense_in, 7)
    assert logits.shape == (2, 7)
  # layer 3 of `skip` consumes only layer 2
  assert params["Conv_3"]["kernel"].shape == (1, 1, 5, 7)


def test_rule3_zero_padding_of_strided_inputs():
  # layer 0: 3x3 stride 2 from the image (8x8 -> 4x4), 4 filters
  # layer 1: 1x1 stride 1 from the image (8x8), 5 filters
  # layer 2: 3x3 stride 1 from layers 0 and 1: 4x4 padded to 8x8, 4 + 5 = 9 channels
  #         fh fw sh sw nf | fh fw sh sw nf bit | fh fw sh sw nf bits
  tokens = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 2, 1, 1]
  space = CNNSpace(predict_strides=True, num_filters=(4, 5, 6, 7))
  arch = space.decode(space.plan(3), tokens)
  assert arch.layers == (Layer(3, 3, 2, 2, 4, ()), Layer(1, 1, 1, 1, 5, ()),
                         Layer(3, 3, 1, 1, 6, (0, 1)))
  params, logits, inter = _init(arch, execute=True)
  assert _conv_out_shape(inter, 0) == (2, 4, 4, 4)
  assert _conv_out_shape(inter, 1) == (2, 8, 8, 5)
  assert params["Conv_2"]["kernel"].shape == (3, 3, 9, 6)
  assert _conv_out_shape(inter, 2) == (2, 8, 8, 6)
  assert np.all(np.isfinite(np.asarray(logits)))
  # stride 3 on 8x8 (SAME): ceil(8 / 3) = 3; concatenated with an 8x8 layer: 8x8 again
  arch3 = CNNArch((Layer(1, 1, 3, 3, 4, ()), Layer(1, 1, 1, 1, 5, ()),
                   Layer(1, 1, 1, 1, 6, (0, 1))))
  _, _, inter = _init(arch3)
  assert _conv_out_shape(inter, 0) == (2, 3, 3, 4)
  assert _conv_out_shape(inter, 2) == (2, 8, 8, 6)
  # the classifier concatenates unconsumed layers of different sizes too
  both = CNNArch((Layer(1, 1, 2, 2, 4, ()), Layer(1, 1, 1, 1, 5, ())))
  params, logits, _ = _init(both)
  assert params["Dense_0"]["kernel"].shape == (9, 10)


def test_concat_padded_pads_bottom_right_with_zeros():
  a = jnp.arange(1, 7, dtype=jnp.float32).reshape(1, 2, 3, 1)     # 2x3, values 1..6
  b = -jnp.ones((1, 4, 4, 2))
  out = concat_padded([a, b])
  assert out.shape == (1, 4, 4, 3)
  np.testing.assert_array_equal(out[0, :2, :3, 0], [[1, 2, 3], [4, 5, 6]])  # kept at top-left
  np.testing.assert_array_equal(out[0, 2:, :, 0], 0.0)                       # bottom rows
  np.testing.assert_array_equal(out[0, :, 3:, 0], 0.0)                       # right column
  np.testing.assert_array_equal(out[..., 1:], b)                             # b untouched
  assert float(jnp.sum(out[..., 0])) == 21.0
  # the order of the inputs is the order of the channels
  out2 = concat_padded([b, a])
  np.testing.assert_array_equal(out2[..., :2], b)
  np.testing.assert_array_equal(out2[0, :2, :3, 2], [[1, 2, 3], [4, 5, 6]])
  # one input is returned as is
  assert concat_padded([a]) is a


# ----------------------------------------------------------------------------------------------
# v3, describe, hashing, JSON


@pytest.mark.slow
def test_v3_blocks_of_three_convs_and_max_pooling():
  space = CNNSpace(num_filters=(6, 12, 24, 36), convs_per_layer=3, pool_after_layers=(1, 2))
  plan = space.plan(4)
  # chain: layer i takes layer i-1; filters 6, 12, 24, 36; 3x1, 1x3, 3x3, 1x1 kernels
  #         fh fw nf | fh fw nf bit | fh fw nf bits | fh fw nf bits
  tokens = [1, 0, 0, 0, 1, 1, 1, 1, 1, 2, 0, 1, 0, 0, 3, 0, 0, 1]
  arch = space.decode(plan, tokens)
  assert arch.convs_per_layer == 3 and arch.pool_after_layers == (1, 2)
  assert [(l.filter_height, l.filter_width, l.num_filters, l.inputs) for l in arch.layers] == [
      (3, 1, 6, ()), (1, 3, 12, (0,)), (3, 3, 24, (1,)), (1, 1, 36, (2,))]
  params, logits, inter = _init(arch, execute=True)
  assert np.all(np.isfinite(np.asarray(logits)))
  convs = sorted(k for k in params if k.startswith("Conv_"))
  assert len(convs) == 3 * 4
  assert len([k for k in params if k.startswith("BatchNorm_")]) == 3 * 4
  assert logits.shape == (2, 10)
  # kernels: the block's first conv consumes the input, the next two its own output
  assert params["Conv_0"]["kernel"].shape == (3, 1, 3, 6)
  assert params["Conv_1"]["kernel"].shape == params["Conv_2"]["kernel"].shape == (3, 1, 6, 6)
  assert params["Conv_3"]["kernel"].shape == (1, 3, 6, 12)
  assert params["Conv_6"]["kernel"].shape == (3, 3, 12, 24)
  assert params["Conv_9"]["kernel"].shape == (1, 1, 24, 36)
  # spatial sizes: 8x8 through layers 0-1, pool -> 4x4 in layer 2, pool -> 2x2 in layer 3
  sizes = [_conv_out_shape(inter, i)[1:3] for i in range(12)]
  assert sizes == [(8, 8)] * 6 + [(4, 4)] * 3 + [(2, 2)] * 3
  assert params["Dense_0"]["kernel"].shape == (36, 10)


@pytest.mark.slow
def test_every_random_token_vector_builds():
  """The compile rules make any token vector a valid network (strides, skips, pooling)."""
  space = CNNSpace(predict_strides=True, num_filters=(2, 3, 4, 5), pool_after_layers=(0,))
  plan = space.plan(4)
  rng = np.random.default_rng(0)
  for _ in range(2):
    tokens = []
    for s in plan:
      if s.kind == base.CHOICE:
        tokens.append(rng.integers(space.decisions[s.decision].num_choices))
      else:
        tokens += list(rng.integers(0, 2, s.layer))
    arch = space.decode(plan, np.array(tokens))
    _, logits, _ = _init(arch, execute=True)
    assert logits.shape == (2, 10) and np.all(np.isfinite(np.asarray(logits)))


def test_describe_mentions_every_layer():
  space = CNNSpace()
  arch = space.decode(space.plan(3), [2, 0, 3, 1, 3, 0, 1, 3, 2, 1, 1, 1])
  assert space.describe(arch) == "0:5x1x64<img 1:3x7x24<0 2:7x5x36<0,1"
  strided = CNNArch((Layer(3, 3, 2, 1, 24, ()), Layer(1, 1, 1, 1, 36, (0,))),
                    pool_after_layers=(0,))
  assert space.describe(strided) == "0:3x3x24/s2x1+pool<img 1:1x1x36<0"
  deep = space.decode(space.plan(8), np.zeros(base.num_tokens(space.plan(8)), np.int32))
  text = space.describe(deep)
  assert text.split() == [f"{i}:1x1x24<img" for i in range(8)]


def test_arch_is_hashable_and_json_friendly():
  space = CNNSpace(predict_strides=True)
  plan = space.plan(2)
  tokens = np.array([1, 2, 1, 2, 0, 0, 0, 0, 1, 3, 1], np.int32)
  a, b = space.decode(plan, tokens), space.decode(plan, tokens.copy())
  c = space.decode(plan, np.array([1, 2, 1, 2, 0, 0, 0, 0, 1, 3, 0], np.int32))
  assert a == b and hash(a) == hash(b)
  assert a != c
  assert len({a: 1, b: 2, c: 3}) == 2
  # the built modules compare and hash equal too (child programs are cached per model)
  assert space.build(a, 10) == space.build(b, 10)
  assert hash(space.build(a, 10)) == hash(space.build(b, 10))
  assert space.build(a, 10) != space.build(c, 10)
  # decoded values are plain Python ints (not numpy scalars)
  assert all(type(v) is int for layer in a.layers for v in layer[:5])
  js = base.to_json(a)
  assert js == {
      "layers": [
          {"filter_height": 3, "filter_width": 5, "stride_height": 2, "stride_width": 3,
           "num_filters": 24, "inputs": []},
          {"filter_height": 1, "filter_width": 1, "stride_height": 1, "stride_width": 2,
           "num_filters": 64, "inputs": [0]},
      ],
      "convs_per_layer": 1,
      "pool_after_layers": [],
  }
  assert json.loads(json.dumps(js)) == js
  # the base class's describe is the JSON text
  assert json.loads(base.SearchSpace.describe(space, a)) == js
  # numpy scalars inside a spec are converted too
  assert base.to_json((np.int32(3), np.float32(0.5))) == [3, 0.5]


def test_arch_json_round_trip_and_history_rows():
  space = CNNSpace(predict_strides=True, pool_after_layers=(1,), convs_per_layer=2)
  plan = space.plan(4)
  tokens = np.asarray(jax.random.randint(jax.random.key(3), (base.num_tokens(plan),), 0, 2))
  arch = space.decode(plan, tokens)
  as_json = json.loads(json.dumps(base.to_json(arch)))
  assert arch_from_json(as_json) == arch
  assert arch_from_json({"step": 0, "arch": as_json}) == arch
  with pytest.raises(ValueError, match="history's JSON form"):
    arch_from_json({"layers": [{"filter_height": 3}]})
