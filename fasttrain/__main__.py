"""`python -m fasttrain ...` is the `fasttrain` command."""
import sys

from .cli import main

sys.exit(main())
