from perllm.devcluster.cli import app

app(prog_name="python -m perllm.devcluster")
