"""Fast generation on CUDA: a bf16 copy of the base, a static KV cache, the decode step as CUDA graphs.

Plain `generate` on the 4-bit model spends almost all of its time outside the GPU's limits: per-token
Python, ~1,500 small kernel launches per step and (for batches of 2 or more) a full NF4 dequantize of
every weight on every step. This engine removes all three while computing the same function:

- **The weights are the 4-bit model's own, dequantized once** (`bitsandbytes.functional.dequantize_4bit`)
  into bf16, q/k/v and gate/up fused into one matrix each. That is exactly what bitsandbytes computes for a
  batch of 2+ (dequantize, then a bf16 matmul) — the same weights the adapter was trained against — done
  once instead of every step. It needs ~2 bytes per parameter of GPU memory (14.5 GB for 7B), so it is
  built only when no run is training and it fits in the free memory with a margin (training comes first);
  otherwise callers keep the plain path.
- **LoRA per row**: every adapter of a request sits in a slot; each LoRA target group (qkv, o, gate/up, down)
  does ``y += ((x @ A_all) * g) @ B_all`` where ``g`` holds, per row, the adapter's scale on its own slot's ranks
  and 0 elsewhere, so base and tuned columns share one batch (one read of the weights a step). A^T rides under the
  dense weight's rows (one GEMM gives y and x @ A: `fold`), B^T is stored so the compiled reduction reads in order.
- **Static KV cache + CUDA graphs**: the decode step is captured once per attention window (256-token buckets) and
  replayed; chat-sized prompt passes too, per 64-token prompt width. The host reads each step's tokens one step
  late (pinned copy + event), so the GPU never waits for Python.
- **Fewer, fused kernels in a step**: the per-layer math is compiled with `torch.compile` (one compile serves all
  layers; coordinate-descent tuned), with the cache write inside it; the mask is built once a step; the attention
  is one Triton kernel (workbench.chat.decode_attention). Each lever has a WORKBENCH_FAST_* switch to measure
  against (BENCHMARKS.md); a compile failure falls back to the uncompiled functions.

Llama, Mistral and Qwen2-style models (RMSNorm, RoPE of any type HF's rotary module handles, GQA,
SwiGLU) are supported; anything else (DoRA, LoRA on the embeddings, sliding windows shorter than the
cache...) returns None from `engine_for` and the caller uses plain `generate`. On a CPU the engine runs
without graphs (tests use that to check its answers against plain `generate`); callers use it by default
only on CUDA.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Iterator

from workbench.chat import decode_attention, nf4_gemv
from workbench.chat.fast_layers import (  # noqa: F401 (fg._dense, fg.Unsupported, fg.kv_bytes are used by callers)
    GROUPS, Unsupported, _base_linear, _core, _dense, _layer_post, _layer_pre, _rms, allow_recompiles, dense_bytes,
    kv_bytes)
from workbench.chat import sampling
from workbench.chat.fast_state import Layer, Slots, State, fold_in, lin_args, stack_slots
# where callers get an engine (re-exported: callers use fast_generate.engine_for and the rest)
from workbench.chat.fast_engines import (  # noqa: F401
    MEMORY_MARGIN, active_lora, cached_engine, drop_engine, enabled, engine_for, training_elsewhere)

SUPPORTED_TYPES = {"llama", "mistral", "qwen2"}
WINDOW = 256  # attention-window bucket of the decode graphs (tokens)
PREFILL_BUCKET = 64  # chat-sized prompts are left-padded to a multiple of this on CUDA, so their prefill can replay
PREFILL_GRAPH_ROWS = 4  # batches of up to this many rows (chat's columns) prefill as CUDA graphs; evaluation's eagerly
PREFILL_GRAPHS_KEPT = 4  # prompt widths whose prefill graph a state keeps
PREFILL_GRAPH_MAX_WIDTH = 1024  # longer prompts prefill eagerly: a graph keeps its activations' memory (~0.5 GB at
# 2 x 1,024 tokens for a 7B model), while the launch time it saves (~65 ms) matters less next to a long prompt's pass


def _captured(warm_up: Callable[[], object], step: Callable[[], object]) -> tuple:
    """(graph, step's output buffers): warm_up() runs on a side stream first (allocations, compiles), then step() is
    captured as a CUDA graph whose replay recomputes that output in place."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm_up()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = step()
    return graph, out


class FastEngine:
    """Dense bf16 copy of a Llama/Mistral/Qwen2 model with per-row LoRA, static cache and graphed decode."""

    def __init__(self, model, compile_layers: bool | None = None, graphs: bool | None = None):
        import torch

        core = _core(model)
        cfg = core.config
        if cfg.model_type not in SUPPORTED_TYPES:
            raise Unsupported(f"model type {cfg.model_type}")
        if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
            raise Unsupported(f"activation {cfg.hidden_act}")
        self.model_ref = weakref.ref(model)
        self.config = cfg
        inner = core.model
        self.embed = inner.embed_tokens.weight
        self.dtype = self.embed.dtype if self.embed.dtype in (torch.bfloat16, torch.float16) else torch.float32
        self.device = self.embed.device
        self.lm_head = core.lm_head.weight
        if getattr(self.lm_head, "quant_state", None) is not None:
            raise Unsupported("quantized lm_head")
        self.norm_w, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.rotary = inner.rotary_emb
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.sliding = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        # liger-kernel's SwiGLU MLP (patched into the classes by a training run earlier in this process) has no
        # act_fn; it computes silu(gate) * up, the activation checked above
        self.act = getattr(inner.layers[0].mlp, "act_fn", None) or torch.nn.functional.silu
        self.layers = []
        for layer in inner.layers:
            w, b = {}, {}
            for group, (parent, names) in GROUPS.items():
                lins = [_base_linear(getattr(getattr(layer, parent), n)) for n in names]
                w[group] = torch.cat([_dense(lin, self.dtype) for lin in lins]) if len(lins) > 1 \
                    else _dense(lins[0], self.dtype)
                biases = [lin.bias for lin in lins]
                b[group] = None if all(x is None for x in biases) else torch.cat(
                    [x.to(self.dtype) if x is not None else torch.zeros(lin.out_features, dtype=self.dtype,
                                                                         device=self.device)
                     for x, lin in zip(biases, lins)])
            self.layers.append(Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                                      layer.input_layernorm.variance_epsilon,
                                      layer.post_attention_layernorm.variance_epsilon, w, b,
                                      {g: m.shape[0] for g, m in w.items()}))
        self._modules = inner.layers  # to read LoRA weights from
        self.nf4 = self._pack_4bit(inner.layers)
        cuda = self.device.type == "cuda"
        self.use_graphs = cuda if graphs is None else graphs
        if compile_layers is None:
            compile_layers = cuda and os.environ.get("WORKBENCH_FAST_COMPILE", "1") != "0"
        self.pre, self.post = _layer_pre, _layer_post
        if compile_layers:
            allow_recompiles()
            # inductor's coordinate-descent tuning of every generated kernel: without it the small LoRA reductions'
            # launch configs came out fast or ~4x slower from one compile to the next (5-6 s more compile, once per
            # batch shape; BENCHMARKS.md). WORKBENCH_FAST_TUNE=0 turns it off
            options = None if os.environ.get("WORKBENCH_FAST_TUNE", "1") == "0" else {"coordinate_descent_tuning": True}
            self.pre = torch.compile(_layer_pre, fullgraph=True, dynamic=False, options=options)
            self.post = torch.compile(_layer_post, fullgraph=True, dynamic=False, options=options)
        self.compiled = bool(compile_layers)
        # the LoRA products of a decode step as generated reductions (fast_layers._proj; 1.07x per token on an H200,
        # BENCHMARKS.md); WORKBENCH_FAST_REDUCE=0 keeps them as matmuls
        self.reduce = "" if os.environ.get("WORKBENCH_FAST_REDUCE", "lora") == "0" else "lora"
        # each adapted layer's LoRA A rides in its base product: A^T sits under the dense weight's rows, so one GEMM
        # reads both (A in the dense copy's dtype); WORKBENCH_FAST_FOLD=0 keeps A apart, in the adapter's own dtype
        self.fold = os.environ.get("WORKBENCH_FAST_FOLD", "1") != "0"
        # decode steps write the KV cache inside the layer math (fused with RoPE when compiled) and build the
        # attention mask once per step as additive floats (SDPA converts a boolean mask on every call, each layer);
        # WORKBENCH_FAST_FUSE=0 keeps the separate cache writes and the boolean mask (to measure against)
        self.fuse = os.environ.get("WORKBENCH_FAST_FUSE", "1") != "0"
        # decode attention as one Triton kernel (workbench.chat.decode_attention; on CUDA, with the additive mask; bf16
        # or fp16 only: its dot products would run float32 inputs as TF32)
        self.attn_kernel = self.fuse and self.dtype != torch.float32 and decode_attention.enabled(self.device)
        # chat-sized prompt passes as CUDA graphs (_prefill); WORKBENCH_FAST_PREFILL_GRAPH=0 runs them eagerly
        self.prefill_graphs = os.environ.get("WORKBENCH_FAST_PREFILL_GRAPH", "1") != "0"
        self.compile_error = ""
        self._states: dict[tuple, State] = {}
        self._slots: Slots | None = None
        self.lock = threading.Lock()

    def _pack_4bit(self, modules) -> bool:
        """With WORKBENCH_FAST_NF4=1 (off by default: slower than the dense copy on an H200, see nf4_gemv), decode
        steps of up to nf4_gemv.MAX_ROWS rows multiply from the 4-bit weights when every layer is bitsandbytes NF4."""
        packed = nf4_gemv.pack_layers(modules, GROUPS, _base_linear) if nf4_gemv.enabled(self.device) else None
        for layer, q in zip(self.layers, packed or []):
            layer.q = q
        return packed is not None

    # -- adapters --------------------------------------------------------------------------

    def _slots_for(self, names: tuple) -> Slots | None:
        """The named adapters stacked into slot buffers (reused when the names repeat)."""
        if not names:
            return None
        if self._slots is not None and self._slots.names == names:
            return self._slots
        slots = stack_slots(self.model_ref(), self._modules, self.layers, names, self.device)
        if slots is None:
            return None
        self._slots = slots
        self._states = {k: s for k, s in self._states.items() if s.slots is None}  # drop old-slot graphs
        if self.fold and fold_in(self.layers, slots):
            self._states.clear()  # the buffers grew: graphs hold the old addresses
        return self._slots

    # -- the model ---------------------------------------------------------------------------

    def _forward(self, st: State, ids, pos, mask, window: int | None):
        """Logits of the last position. window=None: prefill of ids [B,T] at cache 0..T-1 with mask
        [B,1,T,T]; else one decode step at st.cache_pos attending to cache[:window] (mask [B,1,1,window])."""
        import torch.nn.functional as F

        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(x, pos)
        bsz, t = ids.shape
        group = self.heads // self.kv_heads
        pre, post = (_layer_pre, _layer_post) if window is None else (self.pre, self.post)  # prefill: not compiled
        chat_sized = window is not None and bsz <= nf4_gemv.MAX_ROWS  # a decode step of a few rows (not eval's)
        weights = "q" if self.nf4 and chat_sized else "w"  # the 4-bit weights (NF4 kernel, when on) or the dense copy
        reduce = self.reduce if chat_sized else ""
        for i, layer in enumerate(self.layers):
            cache = (st.k[i], st.v[i], st.cache_pos) if window is not None and self.fuse else ()
            q, k, v = pre(x, layer.ln1, layer.eps1, lin_args(self.layers, st, self.fold, i, "qkv", weights), cos, sin, self.heads,
                          self.kv_heads, self.head_dim, reduce, *cache)
            if window is None:
                st.k[i][:, :, :t] = k
                st.v[i][:, :, :t] = v
                kk = k.repeat_interleave(group, dim=1) if group > 1 else k
                vv = v.repeat_interleave(group, dim=1) if group > 1 else v
                attn = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=self.scaling)
                attn = attn.transpose(1, 2).reshape(bsz, t, self.heads * self.head_dim)
            else:
                if not cache:
                    st.k[i].index_copy_(2, st.cache_pos, k)
                    st.v[i].index_copy_(2, st.cache_pos, v)
                # GQA without copies: the G query heads of one KV head act as G query positions
                qg = q.reshape(bsz, self.kv_heads, group, self.head_dim)
                if self.attn_kernel and decode_attention.supports(group, self.head_dim, window):
                    attn = decode_attention.attention(qg, st.k[i][:, :, :window], st.v[i][:, :, :window], mask,
                                                      self.scaling)
                else:
                    attn = F.scaled_dot_product_attention(qg, st.k[i][:, :, :window], st.v[i][:, :, :window],
                                                          attn_mask=mask, scale=self.scaling)
                attn = attn.reshape(bsz, 1, self.heads * self.head_dim)
            x = post(x, attn, lin_args(self.layers, st, self.fold, i, "o", weights), layer.ln2, layer.eps2, lin_args(self.layers, st, self.fold, i, "gu", weights),
                     lin_args(self.layers, st, self.fold, i, "d", weights), self.act, reduce)
        h = _rms(x[:, -1], self.norm_w, self.norm_eps)
        return F.linear(h, self.lm_head).float()

    def _decode_step(self, st: State, window: int):
        import torch

        mask = (st.valid[:, :window] & (st.arange[:window] <= st.cache_pos)).view(st.rows, 1, 1, window)
        if self.fuse:  # additive, built once for all layers (the same -inf / 0 SDPA makes of a boolean mask)
            mask = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        return self._forward(st, st.tok, st.pos, mask, window)

    def _graph(self, st: State, window: int):
        """The decode step for this attention window as a CUDA graph (captured on first use)."""
        if window in st.graphs:
            return st.graphs[window]

        def warm_up():  # also compiles, if compiling: same inputs, same cache writes
            try:
                for _ in range(2 if self.compiled else 1):
                    self._decode_step(st, window)
            except Exception as e:  # no working compiler here (e.g. no C compiler for Triton): run uncompiled
                if not self.compiled:
                    raise
                self.pre, self.post, self.compiled = _layer_pre, _layer_post, False
                self.compile_error = f"{type(e).__name__}: {str(e)[:200]}"
                self._decode_step(st, window)

        st.graphs[window] = _captured(warm_up, lambda: self._decode_step(st, window))
        return st.graphs[window]

    def _state(self, rows: int, length: int, slots: Slots | None) -> State:
        key = (rows, length, slots.names if slots else ())
        st = self._states.get(key)
        if st is None:
            # keep at most two shapes (their KV caches and graphs) alive
            while len(self._states) >= 2:
                self._states.pop(next(iter(self._states)))
            if self.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            st = self._states[key] = State(self, rows, length, slots)
        return st

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], row_adapters: list[str | None], max_new_tokens: int,
                 stop_ids=(), temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 should_stop: Callable[[], bool] | None = None, length: int | None = None,
                 repetition_penalty: float = 1.0) -> Iterator[list[int]]:
        """Yield each step's next token of every row (rows finished by a stop token keep yielding filler;
        the caller ignores rows it saw finish). Stops after max_new_tokens steps, when every row has hit a
        stop token, or when should_stop() is true. `row_adapters[i]` names row i's adapter (None = base).
        `length` sets the static cache length (default: prompt + new tokens, rounded up to 256)."""
        rows, width = len(prompts), self._prompt_width(prompts)
        need = width + max_new_tokens
        length = length or -(-need // WINDOW) * WINDOW
        if length < need:
            raise ValueError(f"cache length {length} < {need}")
        if self.sliding is not None and length > self.sliding:
            raise Unsupported(f"sliding window {self.sliding} shorter than {length} tokens")
        names = tuple(dict.fromkeys(n for n in row_adapters if n))
        stop = set(stop_ids)
        with self.lock:
            run = self._start(prompts, names, [names.index(n) if n else -1 for n in row_adapters], length,
                              temperature, top_p, seed, repetition_penalty, width)
            done = [False] * rows
            for step in range(max_new_tokens):
                tokens = self._advance(run, step, step + 1 < max_new_tokens)
                yield tokens
                for row, tok in enumerate(tokens):
                    done[row] = done[row] or tok in stop
                if all(done) or (should_stop is not None and should_stop()):
                    break
            self._finish()

    def _finish(self):
        if self.device.type == "cuda":
            import torch

            torch.cuda.current_stream().synchronize()

    def _prompt_width(self, prompts) -> int:
        """The prefill's width: the longest prompt, rounded up to PREFILL_BUCKET for chat-sized batches on CUDA (more
        left padding, masked like the rest; the same width with or without graphs, so both run the same kernels)."""
        width = max(len(p) for p in prompts)
        if self.device.type == "cuda" and len(prompts) <= PREFILL_GRAPH_ROWS:
            width = -(-width // PREFILL_BUCKET) * PREFILL_BUCKET
        return width

    def _prefill(self, st: State, ids, pos, mask):
        """The prompt pass: eager, or for chat-sized batches a CUDA graph per prompt width (captured on first use;
        eager prefill is ~2,000 kernel launches, tens of ms of CPU time before the first token)."""
        width = ids.shape[1]
        if not (self.use_graphs and st.rows <= PREFILL_GRAPH_ROWS and self.prefill_graphs
                and width <= PREFILL_GRAPH_MAX_WIDTH):
            return self._forward(st, ids, pos, mask, None)
        if width not in st.prefills:
            inputs = (ids.clone(), pos.clone(), mask.clone())
            try:
                graph, logits = _captured(*[lambda: self._forward(st, *inputs, None)] * 2)
            except RuntimeError as e:  # something in this model's prompt pass cannot be captured: eager from now on
                self.prefill_graphs = False
                self.compile_error = self.compile_error or f"prefill graph: {str(e)[:200]}"
                return self._forward(st, ids, pos, mask, None)
            while len(st.prefills) >= PREFILL_GRAPHS_KEPT:
                st.prefills.pop(next(iter(st.prefills)))
            st.prefills[width] = (graph, inputs, logits)
        graph, inputs, logits = st.prefills[width]
        for buf, value in zip(inputs, (ids, pos, mask)):
            buf.copy_(value)
        graph.replay()
        return logits

    def _start(self, prompts, names, slot_of_row, length, temperature, top_p, seed, penalty=1.0,
               width: int | None = None) -> dict:
        """Prefill and the first token; returns the run's state for _advance."""
        import torch

        with torch.inference_mode():
            rows, width = len(prompts), width or self._prompt_width(prompts)
            slots = self._slots_for(names)
            st = self._state(rows, length, slots)
            st.set_rows(slot_of_row)
            dev = self.device
            pads = [width - len(p) for p in prompts]
            ids = torch.tensor([[0] * pd + p for pd, p in zip(pads, prompts)], device=dev)
            real = torch.tensor([[0] * pd + [1] * len(p) for pd, p in zip(pads, prompts)], device=dev,
                                dtype=torch.bool)
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
            mask = (causal & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=dev)  # no empty rows
            st.valid.fill_(True)
            st.valid[:, :width] = real
            generator = None
            if temperature > 0:
                generator = torch.Generator(device=dev)
                generator.manual_seed(seed if seed is not None and seed >= 0 else torch.seed())
            logits = self._prefill(st, ids, pos, mask.unsqueeze(1))
            seen = None  # the repetition penalty's tokens seen per row (prompt without its padding, then answers)
            seen = sampling.seen_tokens(ids, real, logits.shape[-1]) if penalty != 1.0 else None
            nxt = sampling.pick(sampling.penalized(logits, seen, penalty), temperature, top_p, generator)
            sampling.mark(seen, nxt)
            st.pos.copy_(pos[:, -1:])
            st.cache_pos.fill_(width - 1)
            cuda = dev.type == "cuda"
            run = dict(st=st, nxt=nxt, width=width, length=length, cuda=cuda, temperature=temperature,
                       top_p=top_p, generator=generator, seen=seen, penalty=penalty,
                       host=[torch.empty(rows, dtype=torch.long, pin_memory=cuda) for _ in range(2)],
                       events=[torch.cuda.Event() if cuda else None for _ in range(2)])
            self._to_host(run, 0, nxt)
        return run

    @staticmethod
    def _to_host(run, slot, tokens):
        run["host"][slot].copy_(tokens, non_blocking=run["cuda"])
        if run["cuda"]:
            run["events"][slot].record()

    def _advance(self, run: dict, step: int, more: bool) -> list[int]:
        """Enqueue decode step `step`+1 (when `more`), then return step `step`'s tokens: the host reads
        one step behind the GPU, so the GPU never waits for Python."""
        import torch

        with torch.inference_mode():
            st = run["st"]
            if more:
                st.tok.copy_(run["nxt"].view(st.rows, 1))
                st.pos.add_(1)
                st.cache_pos.add_(1)
                window = min(run["length"], -(-(run["width"] + step + 1) // WINDOW) * WINDOW)
                if self.use_graphs:
                    graph, logits = self._graph(st, window)
                    graph.replay()
                else:
                    logits = self._decode_step(st, window)
                logits = sampling.penalized(logits, run["seen"], run["penalty"])
                run["nxt"] = sampling.pick(logits, run["temperature"], run["top_p"], run["generator"])
                sampling.mark(run["seen"], run["nxt"])
                self._to_host(run, (step + 1) % 2, run["nxt"])
            if run["cuda"]:
                run["events"][step % 2].synchronize()
            return run["host"][step % 2].tolist()
