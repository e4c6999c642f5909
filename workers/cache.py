"""The on-disk model cache's one concurrency rule: whoever builds an entry holds its lock file.

Several trial processes may start at once and all find the same entry missing; the lock makes one of them
build it (into a staging directory renamed into place when complete) while the others wait and reuse it.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
