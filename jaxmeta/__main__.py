"""`python -m jaxmeta`: the `jaxmeta` command line."""

import sys

from jaxmeta.cli import main

sys.exit(main())
