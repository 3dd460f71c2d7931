"""`python -m achroma ...` is the `achroma` command (also under `torchrun -m achroma ...`)."""
import sys

from .cli import main

sys.exit(main())
