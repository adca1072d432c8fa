"""`python -m dgpg_jax.cli`: the `dgpg` command."""

import sys

from dgpg_jax.cli import main

sys.exit(main())
