"""Benchmarks, stability comparisons and reports: importable logic behind scripts/.

  stats.py       Welch t-test, Mann-Whitney U and per-sample summaries (scipy p-values)
  throughput.py  the trainer's jitted step per (kind, N): tokens/s, step-time spread, XLA peak
                 memory, FLOPs and an MFU estimate; the layer-matching rule (layers_for_params)
  benchmark.py   scripts/benchmark.py's table over kinds and N, and its target checks
  stability.py   scripts/compare_stability.py: kinds x seeds x N runs, Welch / Mann-Whitney claims
  ablations.py   scripts/ablations.py: ResNet-BK variants one switch at a time, timed and trained
  induction.py   scripts/induction_anchor.py: induction heads trained at one length, tested longer
  quality.py     scripts/quality_anchor.py: Tiny Shakespeare per kind at equal tokens or time
  memory_plan.py scripts/plan_memory.py: per-device memory of the sharded step, compiled not run
  attention_bench.py  scripts/bench_attention.py: the attention mixer alone, per implementation
  runs.py        short trainings through bk_jax.train.loop.run, wall-clock budgets, validation
                 and the per-run figures read from long_context_results.json
  plots.py       matplotlib (Agg) figures for the scripts
  common.py      output folders, machine description, JSON writing, markdown tables
"""
