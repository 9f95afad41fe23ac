"""Two processes on localhost (jax.distributed, gloo CPU collectives) vs one process."""

import pytest

from sharding_checks import run_check, run_multiprocess


@pytest.mark.slow
def test_two_processes_match_single_process_loss():
  """Each process feeds its half of the global batch; losses equal the one-process run."""
  single = run_check("multiprocess_step", "-", devices=1)
  multi = run_multiprocess("multiprocess_step", "-", processes=2)
  assert sorted(r["process"] for r in multi) == [0, 1]
  for r in multi:
    assert r["processes"] == 2 and r["devices"] == 2
    assert max(abs(a - b) for a, b in zip(r["losses"], single["losses"])) <= 1e-5, (r, single)


@pytest.mark.slow
def test_two_processes_fsdp_x_sequence_match_single_device():
  """2 processes x 2 devices on mesh fsdp=2 x sequence=2 (sequence-parallel BK core across
  devices, fsdp across processes): losses equal the one-device run."""
  single = run_check("multiprocess_step", "-", "1,1,1,1", devices=1)
  multi = run_multiprocess("multiprocess_step", "-", "1,2,1,2", processes=2,
                           devices_per_process=2)
  for r in multi:
    assert r["processes"] == 2 and r["devices"] == 4 and r["sequence_parallel_calls"] > 0, r
    assert max(abs(a - b) for a, b in zip(r["losses"], single["losses"])) <= 1e-5, (r, single)


@pytest.mark.slow
def test_two_process_trainer_writes_outputs_once(tmp_path):
  """The full Trainer on 2 processes: collective checkpoints, results/TensorBoard by process 0."""
  from tiny_configs import write_pattern_corpus

  corpus = write_pattern_corpus(str(tmp_path / "corpus.txt"))
  save = tmp_path / "run"
  res = run_multiprocess("multiprocess_trainer", str(save), corpus, str(tmp_path / "cache"),
                         processes=2)
  assert [r["status"] for r in res] == [{"32": "trained"}] * 2
  assert res[0]["losses"] == res[1]["losses"] and len(res[0]["losses"]) == 3
  assert (save / "long_context_results.json").exists()
  assert (save / "checkpoint_final").is_dir()
  assert sorted(p.name for p in (save / "checkpoints").iterdir())
