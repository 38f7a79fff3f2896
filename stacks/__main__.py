"""The aifactory stack: compose the site's components from the settings read in config.py."""

import config
from aifactory_stack.site import build_site

site = build_site(config.load())
