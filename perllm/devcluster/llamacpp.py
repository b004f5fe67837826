"""A real llama.cpp model server for tests and benches, with nothing downloaded.

`write_tiny_gguf` writes a small Llama-architecture model with seeded random weights
through the `gguf` package (the writer llama.cpp's own converters use); `start_llama_server`
runs the pinned `llama-server` (tools/build-binaries.sh llamacpp, built from the llama.cpp
sources that the llama-cpp-python sdist on PyPI vendors) on loopback with `--metrics`.
The model's text is noise, but everything around it is real: tokenisation, chat template,
KV cache, slots, continuous batching, SSE streaming, `usage`, `timings` and the
`llamacpp:*` Prometheus series the extender reads (`perllm.telemetry.names`).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perllm.devcluster.binaries import BinariesMissing, llama_server_path
from perllm.devcluster.process import Proc, StartError, free_port, start, wait_until

# ChatML, so /v1/chat/completions renders without a model-specific template.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModel:
    """Shape of the random model: big enough that a token costs measurable CPU time."""

    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_ctx: int = 4096

    def vocab(self) -> tuple[list[str], list[float], list[int]]:
        """SentencePiece-style vocabulary: control tokens, the 256 byte-fallback tokens and
        printable ASCII (so any text tokenises, and most sampled tokens decode to text)."""
        import gguf

        tt = gguf.TokenType
        tokens = ["<unk>", "<s>", "</s>"]
        types = [int(tt.UNKNOWN), int(tt.CONTROL), int(tt.CONTROL)]
        tokens += [f"<0x{b:02X}>" for b in range(256)]
        types += [int(tt.BYTE)] * 256
        printable = ["▁"] + [chr(c) for c in range(0x21, 0x7F)]
        tokens += printable + ["▁" + c for c in printable[1:]]
        types += [int(tt.NORMAL)] * (2 * len(printable) - 1)
        scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
        return tokens, scores, types


def write_tiny_gguf(path: Path, *, seed: int = 0, shape: TinyModel = TinyModel()) -> Path:
    """Write a Llama model with N(0, 0.02) weights (F32) to `path`; returns `path`."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = shape.vocab()
    n_vocab, d, head_dim = len(tokens), shape.n_embd, shape.n_embd // shape.n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"perllm-tiny-random-{seed}")
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(d)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)

    def rand(*dims: int) -> np.ndarray:  # numpy order: (rows = out features, cols = in)
        return (rng.standard_normal(dims) * 0.02).astype(np.float32)

    kv = shape.n_head_kv * head_dim
    w.add_tensor("token_embd.weight", rand(n_vocab, d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", rand(n_vocab, d))
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(b + "attn_q.weight", rand(d, d))
        w.add_tensor(b + "attn_k.weight", rand(kv, d))
        w.add_tensor(b + "attn_v.weight", rand(kv, d))
        w.add_tensor(b + "attn_output.weight", rand(d, d))
        w.add_tensor(b + "ffn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(b + "ffn_gate.weight", rand(shape.n_ff, d))
        w.add_tensor(b + "ffn_up.weight", rand(shape.n_ff, d))
        w.add_tensor(b + "ffn_down.weight", rand(d, shape.n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@dataclass
class LlamaServer:
    proc: Proc
    url: str  # http://127.0.0.1:PORT
    model: Path

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())
        except (urllib.error.URLError, OSError):
            return 0, b""  # not listening (yet, or any more)

    def metrics(self) -> str:
        """The server's Prometheus exposition (`--metrics`)."""
        return self.get("/metrics")[1].decode()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until /health is 200 (503 while the model loads); `StartError` with the log
        tail when the process exits or the timeout passes."""
        wait_until(
            self.proc, lambda: self.get("/health", 2.0)[0] == 200, timeout, "healthy /health"
        )

    def stop(self) -> None:
        self.proc.stop()


def start_llama_server(
    model: Path,
    log_dir: Path,
    *,
    slots: int = 2,
    threads: int = 1,
    ctx: int = 4096,
    name: str = "llama-server",
    port: int | None = None,
    timeout: float = 60.0,
) -> LlamaServer:
    """Start `llama-server` on a free loopback port and wait until it has loaded `model`.

    Raises `BinariesMissing` (with the build command) when the pinned binary is absent and
    `StartError` (with the log tail) when it exits or never becomes healthy."""
    binary = llama_server_path()
    if not binary.is_file():
        raise BinariesMissing(
            f"{binary} is missing: build it with tools/build-binaries.sh llamacpp"
        )
    port = port or free_port()
    argv = [
        str(binary),
        *("--model", str(model), "--host", "127.0.0.1", "--port", str(port)),
        *("--ctx-size", str(ctx), "--parallel", str(slots), "--threads", str(threads)),
        *("--threads-http", "2", "--metrics", "--no-webui"),
    ]
    proc = start(name, argv, log_dir / f"{name}.log", die_with_parent=True)
    srv = LlamaServer(proc=proc, url=f"http://127.0.0.1:{port}", model=model)
    try:
        srv.wait_healthy(timeout)
    except StartError:
        proc.stop()
        raise
    return srv
