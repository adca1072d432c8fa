"""The systems that ship with dgpg_jax, one package each: `cloud` (cloud scheduling) and
`ev` (EV charging). A package holds everything of its system (environment, analytical
model, potentials and guidance, baselines, metrics) and builds a `dgpg_jax.task.Task`
from its config; `dgpg_jax.registry` names them for the command line and saved runs.
"""
