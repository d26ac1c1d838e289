"""Log a kind of event once per source, then count it quietly: hostile input must never flood the log."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable


class OnceLog:
    """The first event of each (source, kind) is logged at `level`; repeats go to DEBUG and are counted."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, max_keys: int = 512) -> None:
        self.logger = logger
        self.level = level
        self.max_keys = max_keys
        self.counts: Counter[Hashable] = Counter()
        self._full_logged = False

    def event(self, source: str, kind: str, msg: str, *args: object) -> bool:
        """Record one event; True when it was logged at the configured level."""
        key = (source, kind)
        if key in self.counts:
            self.counts[key] += 1
            self.logger.debug(msg, *args)
            return False
        if len(self.counts) >= self.max_keys:
            # too many sources or kinds to remember: stop logging new ones at level (said once) instead of growing
            if not self._full_logged:
                self._full_logged = True
                self.logger.log(
                    self.level, "more than %d kinds of bad input seen: further ones logged at debug only", self.max_keys
                )
            self.logger.debug(msg, *args)
            return False
        self.counts[key] = 1
        self.logger.log(self.level, msg + " (logged once per client and kind)", *args)
        return True
