"""How the command line shows cloud scheduling's results (`CloudConfig.view`)."""

from dgpg_jax.tasks.cloud.baselines import GREEDY_POLICIES, get_policy
from dgpg_jax.view import View

VIEW = View(
    eval_columns=[("policy", "policy", ""), ("mean_response_time", "mean RT", ".3f"),
                  ("p95_response_time", "p95", ".2f"), ("p99_response_time", "p99", ".2f"),
                  ("ratio_to_best_fit", "/ Best-Fit", ".3f"), ("rejection_rate", "rejected", ".4f"),
                  ("utilisation", "utilisation", ".3f"), ("mean_return", "return", ".1f")],
    summary_columns=[("mean_response_time", "mean RT", ".3f"), ("p95_response_time", "p95", ".2f"),
                     ("p99_response_time", "p99", ".2f"), ("best_fit_p99_response_time", "Best-Fit p99", ".2f"),
                     ("ratio_to_best_fit", "/ Best-Fit", ".3f")],
    sweep_columns=[("final_mean_response_time", "mean RT", ".3f"), ("final_p99_response_time", "p99", ".2f")],
    units="response times in mean job times, pooled over all jobs of all seeds and episodes; "
          "/ Best-Fit = ratio of the pooled means on the same traces",
    plotted=("greedy", "bestfit_k", "jsq"), ylabel="mean response time / Best-Fit (same traces)",
    reference="Best-Fit", make_policy=get_policy, beta_policies=GREEDY_POLICIES)
