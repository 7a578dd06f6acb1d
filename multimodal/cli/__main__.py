"""``python -m multimodal.cli``: the ``multimodal`` command (what ``accelerate launch -m`` runs)."""

import sys

from . import console

sys.exit(console())
