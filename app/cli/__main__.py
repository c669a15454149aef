"""`python -m app.cli ...`, as the tests and `up` start the services."""

import sys

from app.cli.main import main

sys.exit(main())
