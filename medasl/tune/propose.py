"""hyperopt's proposals, made deterministic and replayable.

hyperopt's `fmin` keeps its `Trials` in memory and draws each proposal's seed from one
random generator, so a study that was killed cannot propose again what it would have
proposed. Here nothing is kept in memory: before every proposal, hyperopt's `Trials`
is rebuilt from the study's records (their raw draws and losses, as stored in
study.json), and the proposal's seed is derived from the study's seed and the trial's
number alone. A resumed study therefore proposes exactly what an uninterrupted one
would have.

Proposals are made in rounds of `batch` trials: every trial of a round is proposed
from the trials of the rounds before it (all finished by then), never from its
neighbours in the same round. Which trials run at the same time (`--parallel`) then
changes nothing: `--parallel 1` and `--parallel 2` propose the same values.

The first trial is the pipeline's defaults (the checker keeps them inside their
spaces): a study is never worse than the plain run it starts from.
"""

from __future__ import annotations

import numpy as np

from medasl.tune.space import Space
from medasl.tune.study import Study

ALGORITHMS = ("tpe", "rand", "anneal")


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s proposal: from the study's seed and the number only."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0] % (2**31 - 1))


def propose(study: Study, space: Space, number: int) -> dict[str, float]:
    """hyperopt's raw draw for trial `number` (1-based), from the finished trials of the
    rounds before its own."""
    if number == 1:
        return space.defaults()
    import logging

    from hyperopt import Domain, Trials, anneal, rand, tpe

    logging.getLogger("hyperopt").setLevel(logging.WARNING)  # TPE logs every proposal at INFO

    first_of_round = (number - 1) // study.batch * study.batch + 1
    history = [t for t in study.trials if t.number < first_of_round]
    trials = Trials()
    if history:
        docs = trials.new_trial_docs(
            [t.number - 1 for t in history], [None] * len(history),
            [_result(study, t) for t in history],
            [{"tid": t.number - 1, "cmd": None, "workdir": None,
              "idxs": {name: [t.number - 1] for name in t.raw}, "vals": {name: [v] for name, v in t.raw.items()}}
             for t in history])
        for doc in docs:
            doc["state"] = 2  # JOB_STATE_DONE
        trials.insert_trial_docs(docs)
        trials.refresh()
    domain = Domain(_never_called, space.hyperopt())
    algo = {"tpe": tpe.suggest, "rand": rand.suggest, "anneal": anneal.suggest}[study.algo]
    new = algo([number - 1], domain, trials, trial_seed(study.seed, number))
    vals = new[0]["misc"]["vals"]
    return {name: float(vals[name][0]) for name in vals}


def _result(study: Study, record: object) -> dict[str, object]:
    loss = study.loss(record)  # type: ignore[arg-type]
    return {"status": "ok", "loss": loss} if loss is not None else {"status": "fail"}


def _never_called(values: object) -> float:
    """hyperopt's Domain wants an objective; trials run in `medasl.tune.trial`, not here."""
    raise AssertionError("the study runs its trials itself")
