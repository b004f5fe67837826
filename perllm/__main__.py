"""`python -m perllm`: the `perllm` command."""

from perllm.cli import app

app(prog_name="perllm")
