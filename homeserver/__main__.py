"""``python -m homeserver``: the same as the ``ktchat`` command."""

import sys

from homeserver.cli import main

sys.exit(main())
