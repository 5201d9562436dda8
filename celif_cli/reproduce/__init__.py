"""`celif reproduce`: a client of the service's HTTP API that submits named recipes, follows
the jobs and writes a report (docs/reproduce.md). Torch-free: it only speaks HTTP.

Modules: `plan` (pure rules: selection, overrides, state file, what to do per recipe),
`api` (the httpx client), `report` (markdown and plots), `runner` (the command's flow).
"""
