"""Reading a run's records: the cost report (:mod:`.cost`, prices in :mod:`.prices`) and the
timeline picture (:mod:`.timeline`). Pure functions over
:class:`~flyte_ray._core.events.AttemptEvent` lists: no Ray, no storage access here."""
