"""``python -m wasmcache``: the same as the ``wasmcache`` command."""

import sys

from wasmcache.cli import main

sys.exit(main())
