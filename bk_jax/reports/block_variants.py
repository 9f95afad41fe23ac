"""The ResNet-BK block variants a report can train by name ("resnet_bk:VARIANT", `runs.parse_row`;
scripts/ablations.py lists and describes them)."""

from __future__ import annotations

from bk_jax.models.config import BK_BLOCKS


def variants(heads: list[int]) -> dict[str, dict]:
  """Every ablation variant: name -> ResNet-BK model overrides (scripts/ablations.py lists them).

  Args:
    heads: extra head counts; each adds a variant `heads_H` with n_heads=H.

  Returns:
    {variant name: {model field: value}}, "base" ({}) first.
  """
  v = {"base": {}, "bs_monitors": {"use_birman_schwinger": True},
       "semiseparable": {"use_semiseparable": True},
       "moe_scattering": {"use_moe": True, "router": "scattering"},
       "moe_learned": {"use_moe": True, "router": "learned"}}
  for h in heads:
    v[f"heads_{h}"] = {"n_heads": h}
  green = {"bk_mixer": "green"}
  v.update({"conv": {"bk_conv": True}, "gate": {"bk_gate": True},
            "conv_gate": {"bk_conv": True, "bk_gate": True},
            "sel_shift": {"selective_shift": True}, "sel_coupling": {"selective_coupling": True},
            "green": green, "green_conv_gate": {**green, "bk_conv": True, "bk_gate": True},
            "green_all": {**green, "bk_conv": True, "bk_gate": True, "selective_shift": True,
                          "selective_coupling": True},
            "green_keyed": dict(BK_BLOCKS["green_keyed"])})
  # the keyed block at about the default block's parameter count (d_model 64: 104,048 vs 105,888): half
  # the heads and a d_model-wide FFN pay for the key/query projections
  v["green_keyed_matched"] = {**v["green_keyed"], "n_heads": 8, "d_ff": 64}
  # the keyed block with the non-rotating kernel |G_ij| (DESIGN §2.10, the memory bound)
  v["green_keyed_modulus"] = {**v["green_keyed"], "bk_mixer": "green_modulus"}
  # both keyed blocks with memories at init spread from ~2 to ~660 tokens (bk_init, bk_mixers.py)
  v["green_keyed_long"] = {**v["green_keyed"], "bk_init": "long_memory"}
  v["green_keyed_modulus_long"] = {**v["green_keyed_modulus"], "bk_init": "long_memory"}
  # the selective step on the resolvent (DESIGN §2.12): write apart from decay, so a token can be
  # skipped without forgetting; and its scalar-decay control without the BK term
  v["selective"] = dict(BK_BLOCKS["selective"])
  v["selective_control"] = {**v["selective"], "bk_ward_decay": False}
  # both at about the default block's parameter count (d_model 64: 104,176 and 103,088 vs 105,888)
  v["selective_matched"] = {**v["selective"], "n_heads": 8, "d_ff": 104}
  v["selective_control_matched"] = {**v["selective_control"], "n_heads": 8, "d_ff": 104}
  # the selective step with a dead zone and its lasso (bk_step_threshold, bk_step_penalty): the
  # steps the task does not need become exactly 0, so a layer skips those tokens at any length
  v["selective_lasso"] = dict(BK_BLOCKS["selective_lasso"])
  v["selective_lasso_matched"] = {**v["selective_lasso"], "n_heads": 8, "d_ff": 104}
  # heads of both kinds (DESIGN §2.13): keyed Green heads and selective_lasso's heads in one block;
  # matched with 7 + 1 heads (d_model 64: 104,190 parameters), 6 + 2 (the named block's share;
  # 104,074) and 4 + 4 (104,100)
  v["green_selective"] = dict(BK_BLOCKS["green_selective"])
  v["green_selective_matched"] = {**v["green_selective"], "n_heads": 8, "bk_selective_heads": 1,
                                  "d_ff": 68}
  v["green_selective_quarter_matched"] = {**v["green_selective"], "n_heads": 8,
                                          "bk_selective_heads": 2, "d_ff": 71}
  v["green_selective_half_matched"] = {**v["green_selective"], "n_heads": 8,
                                       "bk_selective_heads": 4, "d_ff": 78}
  return v
