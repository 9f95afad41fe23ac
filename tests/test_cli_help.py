"""--help of the scripts that take `--config FILE` / `--config.a.b=VALUE` documents both."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script", ["train.py", "train_long_context.py", "train_mamba_baseline.py",
                                    "eval_extrapolation.py", "eval_streaming.py"])
def test_help_shows_config_options(script):
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--help"],
                     capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 0, r.stderr
  assert "--config FILE" in r.stdout
  assert "--config.a.b=VALUE" in r.stdout


def test_add_config_help_argument_never_receives_a_value():
  """The documented --config is consumed by split_config_args before argparse runs."""
  import argparse

  from bk_jax.train.cli import add_config_help, split_config_args

  p = add_config_help(argparse.ArgumentParser())
  p.add_argument("--x", type=int)
  path, overrides, rest = split_config_args(["--config", "c.py", "--config.a.b=3", "--x", "1"])
  assert (path, overrides, rest) == ("c.py", [("a.b", "3")], ["--x", "1"])
  args = p.parse_args(rest)
  assert args.x == 1 and args.config is None
