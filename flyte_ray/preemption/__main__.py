"""``python -m flyte_ray.preemption [options]``: the notice watcher (see :mod:`.watcher`)."""

import sys

from .watcher import main

sys.exit(main())
