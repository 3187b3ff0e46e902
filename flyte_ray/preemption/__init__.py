"""The node side of preemption notices: watch the cloud's metadata service, drain the Ray node.

``flyte-ray watch-preemption`` (or ``python -m flyte_ray.preemption``) runs on each spot node. It
polls the provider's metadata service — AWS IMDSv2 (``spot/instance-action``, with a session
token), GCP (``instance/preempted`` with ``wait_for_change``), Azure Scheduled Events
(``Preempt``) — and on a notice drains the local Ray node through the GCS with reason PREEMPTION
and a deadline equal to the cloud's termination time. Ray then stops placing new work there;
running work goes on, and flyte-ray's workers on that node see ``ctx().preemption`` within a
second (:mod:`flyte_ray._ray.drains`).

This package is self-contained on purpose: it imports only the standard library, Ray, and its
own modules (never the rest of ``flyte_ray``), so a cluster config can copy this one folder to
its spot nodes (``ray up``'s ``file_mounts``, a Kubernetes ConfigMap) and run it with the Ray
that is already there, without installing flyte-ray. ``tests/test_preemption_watcher.py``
checks that rule.

Modules: :mod:`.providers` (the three metadata services, parsing with no I/O kept apart),
:mod:`.gcs` (the Ray GCS calls: drain a node, node states, which node is this host's),
:mod:`.watcher` (the loop and the command line), :mod:`.emulator` (a real HTTP server on
loopback that answers as the three metadata services do: for tests, demos and air-gapped trials).
"""
