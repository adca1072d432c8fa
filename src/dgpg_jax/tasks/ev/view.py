"""How the command line shows EV charging's results (`EVConfig.view`)."""

from dgpg_jax.view import View

VIEW = View(
    eval_columns=[("policy", "policy", ""), ("total_cost", "cost", ".1f"), ("ratio_to_valley", "/ valley", ".3f"),
                  ("peak_load", "peak kW", ".1f"), ("peak_to_average", "peak / mean", ".3f"),
                  ("undelivered_energy", "undelivered kWh", ".2f"), ("episode_return", "return", ".2f")],
    summary_columns=[("total_cost", "cost", ".1f"), ("valley_total_cost", "valley cost", ".1f"),
                     ("ratio_to_valley", "/ valley", ".3f"), ("peak_to_average", "peak / mean", ".3f")],
    sweep_columns=[("final_total_cost", "cost", ".1f"), ("final_peak_to_average", "peak / mean", ".3f")],
    units="cost per day, mean over seeds and days; / valley = mean cost over the valley-filling bound on "
          "the same days", plotted=("arrival", "random", "greedy"),
    ylabel="cost / valley-filling bound (same days)", reference="valley filling")
