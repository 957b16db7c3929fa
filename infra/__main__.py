"""Entry point of the Pulumi project (``Pulumi.yaml``: ``main: infra/``).

Pulumi runs this file with ``infra/`` as ``sys.path[0]``; the repository root is put first so
``infra`` (and the rest of the project) import from this checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.pulumi_program import main

main()
