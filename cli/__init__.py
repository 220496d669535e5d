"""The operator CLI, ``himig``: start, watch, pause, resume, cancel and report migrations, list them, decide
reconciliations and manifest approvals.

Ships with the service (operators run it against production). The local tooling adds ``himig stack``,
``himig demo`` and ``himig corpus`` through the ``himig.commands`` entry points when it is installed.

May import: `contracts`, `workflows` (types and query/signal names), `worker` (settings, clients), `activities`
(report reading). Never the local tooling or the emulator (`make lint` checks).
"""
