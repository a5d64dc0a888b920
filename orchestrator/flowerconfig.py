"""Flower's configuration file for ``orch flower`` (Flower executes it and reads its option names).

The task list shows each job's label and a running transfer's progress (see flowerview.py), in
columns chosen for it; options given on the command line still win.
"""

from orchestrator.flowerview import format_task  # noqa: F401 - read by Flower as an option

tasks_columns = "name,args,state,result,received,runtime,worker"
