"""The installed command ``nas-jax`` (and ``python -m nas_jax``): dispatch, packaged config names
usable from any directory, one-line errors."""

import importlib.metadata
import os
import subprocess
import sys

from nas_jax import cli

CONFIGS = os.path.join(os.path.dirname(cli.__file__), os.pardir, "configs")


def test_packaged_config_names_become_their_paths_and_paths_stay():
  path = os.path.normpath(os.path.join(CONFIGS, "cnn_digits.py"))
  got = cli.resolve_config_names(["x", "--config", "cnn_digits:quick", "--config=rnn_ptb_cpu",
                                  "--config.seed=3", "--workdir", "cnn_digits"])
  assert [os.path.normpath(a.partition(":")[0]) if "configs" in a else a for a in got] == [
      "x", "--config", path, "--config=" + os.path.normpath(os.path.join(CONFIGS, "rnn_ptb_cpu.py")),
      "--config.seed=3", "--workdir", "cnn_digits"]
  assert got[2].endswith(":quick")
  kept = ["x", "--config", "experiments/configs/cnn_digits.py:quick", "--config=no_such_config"]
  assert cli.resolve_config_names(kept) == kept


def _nas_jax(*args, cwd):
  return subprocess.run([sys.executable, "-m", "nas_jax", *args], capture_output=True, text=True,
                        timeout=300, cwd=cwd)


def test_the_command_is_installed_and_says_its_commands(tmp_path):
  scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
  assert scripts.get("nas-jax") == "nas_jax.cli:main"
  out = _nas_jax(cwd=tmp_path)
  assert out.returncode == 2
  assert "search|train-child|train-lm|compare|report|shared-seeds|seeds|ranking" in out.stdout
  out = _nas_jax("serch", cwd=tmp_path)
  assert out.returncode == 2
  assert out.stderr.strip() == ("error: nas-jax: unknown command 'serch'; one of search, "
                                "train-child, train-lm, compare, report, shared-seeds, seeds, "
                                "ranking")


def test_a_packaged_config_by_name_from_another_directory(tmp_path):
  # The config is found and read (its bad override is refused with one line) outside a clone.
  out = _nas_jax("search", "--config", "cnn_digits:quick", f"--workdir={tmp_path / 'w'}",
                 "--config.child.epochs=0", cwd=tmp_path)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith("error: config.child.epochs: must be >= 1")
  assert not (tmp_path / "w").exists()


_OWN_FLAGS = {"search": ("--config", "--workdir", "--distributed"),
              "train-child": ("--config", "--search_workdir", "--arch", "--top_k"),
              "train-lm": ("--config", "--workdir"), "compare": ("--group", "--best_of_samples"),
              "report": ("--workdir", "--random_workdir"), "seeds": ("--space", "--arms"),
              "shared-seeds": ("--space", "--searchers"), "ranking": ("--root", "--n")}


def test_each_command_help_lists_its_own_flags_and_exits_0(tmp_path):
  for command, own in _OWN_FLAGS.items():
    out = _nas_jax(command, "--help", cwd=tmp_path)
    assert out.returncode == 0, (command, out.stderr[-2000:])
    assert "flags:" in out.stdout and all(f"{f}:" in out.stdout or f"--[no]{f[2:]}:" in out.stdout
                                          for f in own), (command, out.stdout)
    assert "Try --helpfull" not in out.stdout
  out = _nas_jax("search", "--help", cwd=tmp_path)
  assert "cnn_digits, cnn_cifar10" in " ".join(out.stdout.split())   # the packaged configs


def test_a_misspelt_config_name_suggests_the_nearest_and_writes_nothing(tmp_path):
  out = _nas_jax("search", "--config", "cnn_digts:quick", f"--workdir={tmp_path / 'w'}",
                 cwd=tmp_path)
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert "did you mean cnn_digits?" in out.stderr and "packaged configs:" in out.stderr
  assert not (tmp_path / "w").exists()


def test_a_packaged_name_wins_over_a_local_folder_of_that_name(tmp_path, monkeypatch):
  (tmp_path / "cnn_digits").mkdir()
  monkeypatch.chdir(tmp_path)
  got = cli.resolve_config_names(["x", "--config", "cnn_digits:quick"])
  assert os.path.normpath(got[2].partition(":")[0]) == os.path.normpath(
      os.path.join(CONFIGS, "cnn_digits.py"))
  local = ["x", "--config", str(tmp_path / "my_config.py")]
  assert cli.resolve_config_names(local) == local   # a path stays a path


def test_a_config_file_with_a_syntax_error_is_one_line(tmp_path):
  (tmp_path / "bad.py").write_text("def get_config(:\n")
  out = _nas_jax("search", "--config", str(tmp_path / "bad.py"), f"--workdir={tmp_path / 'w'}",
                 cwd=tmp_path)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      f"error: flag --config: {tmp_path / 'bad.py'}, line 1: invalid syntax; fix the config file"]
  assert not (tmp_path / "w").exists()
