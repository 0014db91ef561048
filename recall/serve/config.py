"""What a worker is told by the process that starts it: where the loader's state files and the
metrics slots are, and which jobs it serves (in an environment variable: uvicorn spawns workers
that import the application by name)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_ENV = "RECALL_SERVE_CONFIG"


@dataclass(frozen=True)
class Config:
    instance: Path  # the loader's state files and the metrics slots
    jobs: list[str]

    def to_env(self) -> str:
        return json.dumps({"instance": str(self.instance), "jobs": self.jobs})

    @classmethod
    def from_env(cls) -> Config:
        data = json.loads(os.environ[CONFIG_ENV])
        return cls(Path(data["instance"]), list(data["jobs"]))
