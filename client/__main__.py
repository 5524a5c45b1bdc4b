"""`python -m client`: the same as the `moderation` command."""

import sys

from client.cli import main

sys.exit(main())
