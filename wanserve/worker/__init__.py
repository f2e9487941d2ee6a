"""Worker side of the service: the supervisor and the processes of each worker group.

`Supervisor(settings).run()` is what `wanserve worker` runs; `group.group_main` is the entry
point of every rank process; `task_run.TaskRun` runs one task on rank 0.
"""
