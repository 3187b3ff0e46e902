"""The pure core of flyte-ray: what a call is, and the rules that decide its attempts.

Nothing here imports Ray or does I/O (``tests/test_structure.py`` fails if a module of this
package pulls Ray in). The Ray layer (:mod:`flyte_ray._ray`) turns what Ray does into the facts
this package reasons about (:class:`~flyte_ray._core.classify.Observation`); the controller
(:mod:`flyte_ray._controller`) wires the two together. So every rule of the contract's
"Attempts" section can be tested here with scripted outcomes and a fake clock, without a cluster.

Modules:

* :mod:`.records` -- markets, outcome kinds, the attempt request / outcome / record;
* :mod:`.policy` -- the market rule, the retry budgets and the backoff, as one policy object;
* :mod:`.loop` -- the attempt loop (an ``async`` function over injected ``execute`` / ``sleep``);
* :mod:`.classify` -- an observed failure (facts) to an outcome kind;
* :mod:`.call` -- one call of a task and its accounting; child call identities;
* :mod:`.spec` / :mod:`.validation` -- resolved settings and their validation;
* :mod:`.settings` -- the process-wide flyte-ray settings (a value);
* :mod:`.drive` -- running an ``async`` implementation to completion from blocking code;
* :mod:`.process` -- the one object that holds per-process state.
"""
