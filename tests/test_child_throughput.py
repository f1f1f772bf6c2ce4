"""benchmarks/child_throughput.py: its PyTorch peer is CNNChild, and a tiny run writes its JSON."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nas_jax.spaces import cnn

torch = pytest.importorskip("torch")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import child_throughput  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

L = cnn.Layer
ARCHS = {
    # the digits space: stride 1, skip connections
    "skips": cnn.CNNArch((L(3, 5, 1, 1, 8, ()), L(7, 1, 1, 1, 16, (0,)),
                          L(3, 3, 1, 1, 4, (0, 1)), L(1, 1, 1, 1, 8, ()))),
    # strides: inputs of different sizes padded bottom/right before concatenation; XLA's SAME
    # padding is asymmetric (8 -> 3 with stride 3), even kernels too
    "mismatched": cnn.CNNArch((L(3, 3, 3, 3, 8, ()), L(5, 3, 2, 1, 6, ()),
                               L(2, 4, 1, 2, 4, (0, 1)), L(3, 3, 1, 1, 5, (1, 2)))),
    # the v3 form: blocks of convs and fixed max pooling on an odd size
    "blocks_pool": cnn.CNNArch((L(3, 3, 1, 1, 6, ()), L(5, 5, 1, 1, 4, (0,)),
                                L(3, 1, 1, 1, 4, (0, 1))), 2, (0, 1)),
}


def _flax_to_torch(flax_params, module):
  """Copies CNNChild's variables into the PyTorch child (creation order = module order)."""
  convs = [flax_params[f"Conv_{i}"]["kernel"] for i in range(len(module.convs))]
  bns = [flax_params[f"BatchNorm_{i}"] for i in range(len(module.bns))]
  with torch.no_grad():
    for conv, k in zip(module.convs, convs):
      conv.weight.copy_(torch.from_numpy(np.array(k).transpose(3, 2, 0, 1).copy()))
    for bn, p in zip(module.bns, bns):
      bn.weight.copy_(torch.from_numpy(np.array(p["scale"])))
      bn.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    module.dense.weight.copy_(torch.from_numpy(np.array(flax_params["Dense_0"]["kernel"]).T.copy()))
    module.dense.bias.copy_(torch.from_numpy(np.array(flax_params["Dense_0"]["bias"])))


@pytest.mark.parametrize("name,hwc", [("skips", (8, 8, 1)), ("mismatched", (8, 8, 1)),
                                      ("mismatched", (9, 7, 3)), ("blocks_pool", (7, 7, 3))])
def test_torch_child_is_cnn_child(name, hwc):
  arch = ARCHS[name]
  model = cnn.CNNChild(arch, 10)
  x = np.random.default_rng(0).standard_normal((4,) + hwc).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(1)   # random values for every variable (init would compile slowly)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32) * 0.3,
                           shapes)
  for name_, p in variables["params"].items():
    if name_.startswith("BatchNorm"):
      p["scale"] = p["scale"] + 1.0
  jax_count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  peer = child_throughput.torch_child(arch, hwc, 10)
  assert child_throughput.torch_param_count(peer) == jax_count
  _flax_to_torch(variables["params"], peer)
  want, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  peer.train()
  got = peer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4)
  assert np.std(got) > 0.1   # not a degenerate comparison


@pytest.mark.slow   # several processes: ~25-50 s on the 2-core machine
def test_tiny_benchmark_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "child_throughput.py"),
         "--children=1", "--m=1", "--executors=exact,torch", "--repeats=1", "--epochs=1",
         "--max_train=128", "--matmul_size=256", "--nocontroller", f"--json={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  for key in ("workload", "child_config", "executors", "ratios_to_torch", "architectures",
              "exact_children_train_gflop"):
    assert key in res
  assert res["child_config"]["images_per_epoch_trained"] == 128
  exact, peer = res["executors"]["exact"], res["executors"]["torch"]
  assert set(exact["passes"]) == {"cold", "search", "rerun", "warm"}
  assert set(peer["passes"]) == {"cold", "search", "warm"}
  for entry in (exact, peer):
    assert entry["peak_rss_mb"]["median"] > 0
    for p in entry["passes"].values():
      assert p["children_per_hour"] > 0 and p["matmul_peak_gflops"] > 0
      assert len(p["val_accuracy"]) == 1
  assert set(res["ratios_to_torch"]) == {"exact/cold", "exact/search", "exact/warm"}
  for s in ("a", "b"):
    row, = res["architectures"][s]
    assert row["params"] == row["params_torch"] > 0
  assert res["architectures"]["a"][0]["arch"] != res["architectures"]["b"][0]["arch"]
