module perllm.dev/bench/loadgen

go 1.22
