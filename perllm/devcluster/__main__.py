from perllm.__main__ import run

run("perllm.devcluster.cli", "python -m perllm.devcluster")
