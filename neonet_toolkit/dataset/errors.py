"""The dataset layer's error type."""
from __future__ import annotations

from typing import Sequence


class DatasetError(ValueError):
    """A problem with the user's dataset. The message names the case(s) and the fix."""

    def __init__(self, problems: str | Sequence[str]):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = self.problems[0]
        else:
            msg = f"{len(self.problems)} problems found:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)
