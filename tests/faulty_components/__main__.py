"""`python -m tests.faulty_components worker ...`: the real `sdxl-img2img` command, in a process that
has imported `FaultyUNet` (diffusers loads a component class of another library only from a module
already imported)."""

import sys

import tests.faulty_components  # noqa: F401  (the import is the point)
from app.cli.main import main

sys.exit(main())
