"""A study as data: `<out>/<pipeline>/study.json`, rewritten atomically after every change.

One JSON document (no pickle): the file and pipeline, the objective and its goal, the
algorithm, seed and batch size, the fixed `--set` values, the space, and one record
per trial: its number, status, hyperopt's raw draw (`raw`, what the proposals are
replayed from), the values and their `--set` texts, the objective, the per-epoch
history of its trainings, its times, its own output folder, and for a failed trial the
diagnostic code and message. Floats are written by `json` with `repr`, which reads
back to the same float, so a replayed study proposes the same values.

Statuses: `proposed` (its values are drawn, it has not started), `running` (started, not finished: a killed study left it; the next run of the
same command runs it again, and the cache gives back everything it finished, a
training from its last epoch checkpoint), `ok`, `failed` (with `code` and `message`),
`stopped early` (the median rule stopped its training; no objective).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = 1
PROPOSED, RUNNING, OK, FAILED, STOPPED = "proposed", "running", "ok", "failed", "stopped early"
FINISHED = (OK, FAILED, STOPPED)


@dataclass
class TrialRecord:
    number: int  # 1, 2, ...; hyperopt's trial id is number - 1
    raw: dict[str, float]
    values: dict[str, object]
    sets: dict[str, str]
    status: str = PROPOSED
    objective: float | None = None
    code: str | None = None
    message: str | None = None
    history: dict[str, list[dict[str, object]]] = field(default_factory=dict)  # training step -> epochs
    seconds: float = 0.0  # wall time of the trial (checking and running)
    overhead: float = 0.0  # of which the study's own work: checking, planning, reading the objective
    computed: int = 0  # results this trial computed (the others came from the cache)
    cached: int = 0
    folder: str = ""  # the trial's own output folder, relative to the study's folder

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Study:
    file: str
    file_sha256: str
    pipeline: str
    objective: str  # the name of the objective's binding
    goal: str  # max | min
    algo: str
    seed: int
    batch: int
    sets: dict[str, str]  # fixed `--set` values, given to every trial
    space: list[dict[str, object]]
    trials: list[TrialRecord] = field(default_factory=list)
    format: int = FORMAT

    def loss(self, record: TrialRecord) -> float | None:
        """What hyperopt minimizes: the objective, negated when it is maximized."""
        if record.status != OK or record.objective is None:
            return None
        return -record.objective if self.goal == "max" else record.objective

    def best(self) -> TrialRecord | None:
        done = [t for t in self.trials if self.loss(t) is not None]
        return min(done, key=lambda t: (self.loss(t), t.number)) if done else None

    def settings(self) -> dict[str, object]:
        """What must match for a study to be resumed by a command."""
        return {"pipeline": self.pipeline, "objective": self.objective, "goal": self.goal, "algo": self.algo,
                "seed": self.seed, "batch": self.batch, "sets": self.sets, "space": self.space}

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["best"] = (self.best() or _NONE).number
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Study:
        trials = [TrialRecord(**t) for t in data.pop("trials", [])]  # type: ignore[arg-type, union-attr]
        data.pop("best", None)
        return cls(**data, trials=trials)  # type: ignore[arg-type]


class _NoTrial:
    number = None


_NONE = _NoTrial()


class StudyFileProblem(Exception):
    """study.json cannot be read back (edited by hand, cut short): E2064."""


def load(path: Path) -> Study | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StudyFileProblem(f"{path} is not a study of format {FORMAT}")
        return Study.from_json(data)
    except (json.JSONDecodeError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise StudyFileProblem(f"{path} cannot be read as a study: {exc}") from None


def save(study: Study, path: Path) -> None:
    """Write the whole study under a temporary name and rename it into place: a study
    killed while saving keeps its previous version, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(study.to_json(), indent=1, allow_nan=True)
    fd, temporary = tempfile.mkstemp(prefix=".study-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
