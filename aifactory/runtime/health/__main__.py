"""`python -m aifactory.runtime.health`: one host's checks (aifactory.runtime.health.node)."""

import sys

from aifactory.runtime.health.node import main

sys.exit(main())
