"""aifactory: stand up a sovereign, on-premises, air-gapped AI factory."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
