"""ResNet-BK ablations: speed (and optionally quality) of one switch at a time.

Variants (everything else = the base ResNet-BK of --d_model/--n_layers/--n_heads):
  base                      FFN, no monitors, plain resolvent
  bs_monitors               use_birman_schwinger=True (Birman-Schwinger monitors in the step)
  semiseparable             use_semiseparable=True (rank semiseparable_rank)
  moe_scattering            use_moe=True, router="scattering" (parameter-free)
  moe_learned               use_moe=True, router="learned" (top-k + balance loss)
  heads_H                   n_heads=H for every H in --heads
  block variants (bk_jax.models.bk_mixers; DESIGN §2.9, §2.10):
  conv                      bk_conv=True (width-4 causal depthwise conv + SiLU on the block input)
  gate                      bk_gate=True (mixer output times SiLU of a projection of the input)
  conv_gate                 conv + gate on the seed's eta*g features
  sel_shift                 selective_shift=True (per-position z_i from the input)
  sel_coupling              selective_coupling=True (per-position hopping t_i from the input)
  green                     bk_mixer="green" (values mixed by the prefix resolvent row)
  green_conv_gate           green + conv + gate
  green_all                 green + conv + gate + selective shift and coupling
  green_keyed               green_all with key (x) value states read by queries (bk_key_dim=8:
                            8 x d_head per head, Mamba's B_t/C_t role) and eta_min=1e-3 (memory)
  green_keyed_matched       green_keyed with 8 heads and d_ff = d_model (at d_model 64: 104,048
                            parameters, the default block's 105,888)
  green_keyed_modulus       green_keyed with the real kernel |G_ij| (bk_mixer="green_modulus")
  green_keyed_long          green_keyed with bk_init="long_memory" (memories at init ~2-660 tokens)
  green_keyed_modulus_long  green_keyed_modulus with bk_init="long_memory"
  selective                 bk_mixer="ward_selective" (DESIGN §2.12: a per-token step Delta, decay
                            A_h + s_h * BK's Ward log-decay, write 1 - a) + keys 8, conv, gate,
                            eta_min=1e-3
  selective_control         selective's scalar-decay control (bk_ward_decay=False: no resolvent)
  selective_matched         selective with 8 heads and d_ff 104 (at d_model 64: 104,176 parameters)
  selective_control_matched selective_control with 8 heads and d_ff 104 (103,088 parameters)
  selective_lasso           selective with a step dead zone and its lasso (bk_step_threshold=1e-3,
                            bk_step_penalty=0.03: unneeded steps exactly 0, tokens skipped)
  selective_lasso_matched   selective_lasso with 8 heads and d_ff 104 (104,176 parameters)
  green_selective           heads of both kinds (DESIGN §2.13): green_keyed whose last 4 of 16
                            heads run selective_lasso's step (bk_selective_heads=4)
  green_selective_matched   green_selective with 7 + 1 heads and d_ff 68 (104,190 parameters)
  green_selective_quarter_matched  green_selective with 6 + 2 heads and d_ff 71 (104,074
                            parameters; the named block's share of selective heads)
  green_selective_half_matched  green_selective with 4 + 4 heads and d_ff 78 (104,100 parameters)
Baselines (--baselines mamba,mamba2,transformer): the same training at parameters matched to base
(layers matched, bk_jax.reports.throughput.layers_for_params), timed the same way.
Speed: the trainer's jitted step per variant (bk_jax.reports.throughput.bench_one; same step as
scripts/benchmark.py): median step time, tokens/s, XLA peak memory, ratio to base measured in
the same run. Quality (when --quality_steps > 0): `--quality_steps` training steps on char-level
Tiny Shakespeare through bk_jax.train.loop.run and the validation loss of the final checkpoint.
Outputs: ablations.json, ablations.md, ablations.png under --out (default results/block_variants/ablations/).

  python scripts/ablations.py --n 2048 --quality_steps 300
  python scripts/ablations.py --quick
  # equal tokens for every row (--quality_tokens sets the steps), with baselines
  python scripts/ablations.py --only base,conv,gate,sel_shift,sel_coupling,green,green_conv_gate \
      --baselines mamba,transformer --quality_tokens 1000000 --n 2048
"""

from __future__ import annotations

import argparse
import os

from bk_jax.reports import ablations, common, runs


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--n", type=int, default=2048, help="sequence length of the timed step")
  ap.add_argument("--tokens-per-step", type=int, default=16384)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--d_model", type=int, default=128)
  ap.add_argument("--n_layers", type=int, default=4)
  ap.add_argument("--n_heads", type=int, default=16)
  ap.add_argument("--heads", default="4,64", help="extra head counts (base uses --n_heads)")
  ap.add_argument("--only", default="", help="comma list of variants to run (default all)")
  ap.add_argument("--quality_steps", type=int, default=0)
  ap.add_argument("--quality_tokens", type=int, default=0,
                  help="> 0: train every row on this many tokens (sets --quality_steps)")
  ap.add_argument("--baselines", default="", help="comma list of other kinds (mamba,mamba2,transformer)")
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--quality_len", type=int, default=256)
  ap.add_argument("--quality_batch", type=int, default=16)
  ap.add_argument("--data", default=runs.TINY_SHAKESPEARE)
  ap.add_argument("--eval_tokens", type=int, default=32768)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if args.quality_tokens > 0:
    args.quality_steps = max(1, args.quality_tokens // (args.quality_batch * args.quality_len))
  if args.quick:
    args.n, args.tokens_per_step, args.repeats, args.d_model, args.n_layers = 32, 64, 1, 16, 1
    args.n_heads, args.heads = common.QUICK_N_HEADS, "2"
    args.only = args.only or "base,bs_monitors,heads_2"
    args.quality_steps = min(args.quality_steps, 3)
    args.quality_len, args.quality_batch, args.eval_tokens = 16, 2, 64
  try:  # a bad row fails before anything runs
    todo = ablations.plan_rows([int(h) for h in args.heads.split(",") if h],
                               args.only.split(",") if args.only else None, args.baselines.split(","))
  except ValueError as e:
    ap.error(str(e))
  out = common.out_dir(args.out, "block_variants/ablations", args.quick)
  return ablations.run_ablations(
      todo, n=args.n, tokens_per_step=args.tokens_per_step, repeats=args.repeats,
      d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
      quality_steps=args.quality_steps, quality_len=args.quality_len,
      quality_batch=args.quality_batch, lr=args.lr, seed=args.seed,
      data=os.path.abspath(args.data), eval_tokens=args.eval_tokens,
      out=out, args=vars(args))


if __name__ == "__main__":
  main()
