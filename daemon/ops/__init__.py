"""Operations commands: see inside the daemon, fix its outbox, check its configuration.

One module a command; ``daemon.cli`` registers each on its parser and runs it:

* ``status``: health at a glance (last poll, lag, cycles, outbox, last errors, leader);
* ``incidents``: the tracked incidents with their paging state;
* ``explain``: the whole story of one incident;
* ``outbox``: the outbox, and ``retry`` / ``skip`` of its actions;
* ``check``: the configuration validated and both APIs called.

and what they share:

* ``render``: times and ages, tables sized to the terminal, JSON; ``utcnow``, the "now"
  every command uses (tests move it there);
* ``state_db``: the existing state DB opened (``open_store``, ``NoDatabase``);
* ``command``: a command's parser with ``--json``, its failure output, one read or one
  write transaction.

``status``, ``incidents``, ``explain`` and ``outbox`` only read the state DB, so they are
safe while the daemon runs (SQLite WAL: readers never block the writer). ``retry`` and
``skip`` write, each in one short transaction. ``check`` calls both APIs read-only.

All SQL lives in ``daemon.store`` ("one module owns the SQL"); these modules gather rows
into plain dicts (what ``--json`` prints) and render those dicts for people, so the two
outputs can never disagree.
"""
