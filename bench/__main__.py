"""`python -m bench [kernels|collectives|train|gpu|all] [--quick] [--json FILE] [--png FILE] [--results FILE]`
(also `fasttrain bench ...` from a source checkout)."""
from .run import main

raise SystemExit(main())
