"""The bottom floor shared by train, eval and reports: nothing here imports another bk_jax floor.

* `errors`: `ConfigError`, the one-line bad-configuration error the scripts turn into exit 2.
* `devices`: `select_device(config.device)`.
* `metrics`: host-side metric helpers (`perplexity`).
* `memory`: memory figures named by what they measure (device peak since start, host RSS).
* `jsonio`: JSON-safe conversion and atomic JSON writes.
* `provenance`: the command line and machine stamped into every results JSON.
* `markdown`: the markdown tables the scripts print and the reports write.
* `run_config`: rules about a run config both train and eval read (`train_lengths`).
* `checkpoint_meta`: what makes a checkpoint fit a model (architecture fields, config
  differences) and how a damaged checkpoint is recognised.
"""
