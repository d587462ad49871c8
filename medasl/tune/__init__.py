"""Studies: `medasc tune`, hyperparameter search with hyperopt over a pipeline's
`param ... search` clauses.

- `space`: the search space read from the checked pipeline and its text, as hyperopt
  expressions, and a trial's values as the `--set` texts that specialize the pipeline;
- `study`: the study as JSON (trials, values, status, objective, per-epoch history,
  times, output folders), written atomically after every change, so that a killed
  study resumes;
- `propose`: hyperopt's proposals, replayed from the study's JSON so that a resumed
  study proposes what an uninterrupted one would;
- `trial`: one trial, checked again with its values and run in-process on the shared
  cache;
- `driver`: the loop (batches, worker processes, early stopping, the timeout);
- `report`: the HTML report and the study's figures.

Nothing here imports torch or hyperopt at import time: `medasc tune --dry-run` on a
file with a mistake stays as light as `medasc check`.
"""
