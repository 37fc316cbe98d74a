"""The fast engine's per-request state: adapter slots (several LoRA adapters stacked so each row of a batch uses its
own, graph-capturable) and the static buffers of one batch shape (KV cache, step inputs, row gates, graphs)."""
from __future__ import annotations

from dataclasses import dataclass

from workbench.chat.fast_layers import GROUPS, Unsupported, _base_linear, _core


@dataclass
class Slots:
    names: tuple  # adapter name per slot
    rank: int
    groups: tuple  # groups any slot's adapter targets
    a: dict  # (layer, group) -> [in, S*M*R]
    bm: dict  # (layer, group) -> B^T stacked, [out, S*M*R] (each output's LoRA row contiguous: the decode step's
    # reduction over the ranks then reads memory in order)
    scale: dict  # (layer, group) -> [S*M*R]


@dataclass
class Layer:
    ln1: object
    ln2: object
    eps1: float
    eps2: float
    w: dict  # group -> dense weight [out, in], with room below for folded LoRA A rows (the engine's `fold`)
    b: dict  # group -> bias or None (zero-padded like w)
    out: dict  # group -> the base weight's rows
    q: dict | None = None  # group -> the 4-bit weights for the NF4 decode kernel (packed, absmax, code, blocksize)


class State:
    """Static buffers for one batch shape: KV cache, step inputs, LoRA row gates, captured graphs."""

    def __init__(self, engine, rows: int, length: int, slots: Slots | None):
        import torch

        dev, e = engine.device, engine
        self.rows, self.length, self.slots = rows, length, slots
        self.k = [torch.zeros(rows, e.kv_heads, length, e.head_dim, dtype=e.dtype, device=dev) for _ in e.layers]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.tok = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.cache_pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.valid = torch.ones(rows, length, dtype=torch.bool, device=dev)
        self.arange = torch.arange(length, device=dev)
        self.gate = {}  # (layer, group) -> [rows, S*M*R] row gate x scale
        if slots is not None:
            for key, scale in slots.scale.items():
                self.gate[key] = torch.zeros(rows, scale.numel(), dtype=scale.dtype, device=dev)
        self.graphs: dict[int, tuple] = {}  # attention window -> (graph, logits buffer)
        self.prefills: dict[int, tuple] = {}  # prompt width -> (graph, (ids, pos, mask) inputs, logits buffer)
        self.slot_of_row: tuple | None = None

    def set_rows(self, slot_of_row: list[int]) -> None:
        """Which slot (-1 = no adapter) each row uses: fills the per-row LoRA gates in place."""
        import torch

        if self.slots is None or tuple(slot_of_row) == self.slot_of_row:
            return
        n = len(self.slots.names)
        for key, scale in self.slots.scale.items():
            width = scale.numel() // n
            sel = torch.zeros(self.rows, scale.numel(), dtype=scale.dtype, device=scale.device)
            for row, slot in enumerate(slot_of_row):
                if slot >= 0:
                    sel[row, slot * width:(slot + 1) * width] = 1
            self.gate[key].copy_(sel * scale)
        self.slot_of_row = tuple(slot_of_row)



def fold_in(layers, slots: Slots) -> bool:
    """Write each adapted group's stacked A^T under its base rows (the engine's `fold`: one GEMM reads both), growing a
    buffer that has too little room. True when one grew: then captured graphs hold the old buffers' addresses."""
    import torch

    moved = False
    for (i, group), a in slots.a.items():
        layer = layers[i]
        out, width, w = layer.out[group], a.shape[1], layer.w[group]
        if w.shape[0] < out + width:
            moved = True
            grown = torch.empty(out + width, w.shape[1], dtype=w.dtype, device=w.device)
            grown[:out].copy_(w[:out])
            layer.w[group] = w = grown
            if layer.b[group] is not None:
                bias = torch.zeros(out + width, dtype=w.dtype, device=w.device)
                bias[:out].copy_(layer.b[group][:out])
                layer.b[group] = bias
        w[out:out + width].copy_(a.t())
    return moved


def lin_args(layers, st: State, fold: bool, i: int, group: str, weights: str) -> tuple:
    """Layer i's `group` product for fast_layers._proj: (w, b, a, bm, gate, split); `weights` "q": the NF4 kernel's
    4-bit weights (never folded), "w": the dense copy."""
    layer = layers[i]
    out, b, key = layer.out[group], layer.b[group], (i, group)
    lora = st.slots is not None and key in st.slots.a
    if weights == "q":
        return (layer.q[group], None if b is None else b[:out],
                *((st.slots.a[key], st.slots.bm[key], st.gate[key]) if lora else (None, None, None)), 0)
    w = layer.w[group]
    if not lora:
        return w[:out], None if b is None else b[:out], None, None, None, 0
    if fold:
        rows = out + st.slots.a[key].shape[1]
        return w[:rows], None if b is None else b[:rows], None, st.slots.bm[key], st.gate[key], out
    return w[:out], None if b is None else b[:out], st.slots.a[key], st.slots.bm[key], st.gate[key], 0


def stack_slots(model, modules, layers, names: tuple, device) -> Slots | None:
    """Stack the named adapters' LoRA weights into slot buffers, per layer and target group; None when none of them
    targets a group the engine runs. Raises Unsupported for what the engine cannot run (DoRA, LoRA bias, LoRA on the
    embeddings or lm_head, trained modules)."""
    import torch

    rank, groups = 0, set()
    for i in range(len(layers)):
        for group, (parent, members) in GROUPS.items():
            for m in members:
                mod = getattr(getattr(modules[i], parent), m)
                lora_a = getattr(mod, "lora_A", None)
                for name in names:
                    if lora_a is not None and name in lora_a:
                        if name in getattr(mod, "lora_variant", {}) or getattr(mod, "use_dora", {}).get(name):
                            raise Unsupported("DoRA / LoRA variants")
                        if getattr(mod, "lora_bias", {}).get(name):
                            raise Unsupported("LoRA bias")
                        rank = max(rank, lora_a[name].weight.shape[0])
                        groups.add(group)
    for name in names:  # LoRA on modules the engine does not run (embeddings, lm_head) -> plain path
        core = _core(model)
        for mod_name, mod in core.named_modules():
            if hasattr(mod, "lora_A") and name in getattr(mod, "lora_A", {}) and not any(
                    mod_name.endswith(f"{p}.{m}") for p, ms in GROUPS.values() for m in ms):
                raise Unsupported(f"LoRA on {mod_name}")
            if name in getattr(mod, "modules_to_save", {}) or (
                    hasattr(mod, "lora_embedding_A") and name in getattr(mod, "lora_embedding_A", {})):
                raise Unsupported(f"trained module {mod_name}")
    if not groups:
        return None
    a, bm, scale = {}, {}, {}
    n = len(names)
    for i in range(len(layers)):
        for group in sorted(groups):
            parent, members = GROUPS[group]
            w = layers[i].w[group][:layers[i].out[group]]
            outs = [_base_linear(getattr(getattr(modules[i], parent), m)).out_features for m in members]
            width = len(members) * rank
            a_ = torch.zeros(w.shape[1], n * width, dtype=torch.float32, device=device)
            b_ = torch.zeros(n * width, w.shape[0], dtype=torch.float32, device=device)
            s_ = torch.zeros(n * width, dtype=torch.float32, device=device)
            dtype = None
            for si, name in enumerate(names):
                off_out = 0
                for mi, m in enumerate(members):
                    mod = getattr(getattr(modules[i], parent), m)
                    if hasattr(mod, "lora_A") and name in mod.lora_A:
                        wa, wb = mod.lora_A[name].weight, mod.lora_B[name].weight  # [r, in], [out, r]
                        dtype = wa.dtype
                        r, k0 = wa.shape[0], si * width + mi * rank
                        a_[:, k0:k0 + r] = wa.detach().t().float()
                        b_[k0:k0 + r, off_out:off_out + outs[mi]] = wb.detach().t().float()
                        s_[k0:k0 + r] = float(mod.scaling[name])
                    off_out += outs[mi]
            dtype = dtype or torch.float32  # peft runs LoRA in the adapter weights' dtype
            a[(i, group)], scale[(i, group)] = a_.to(dtype), s_.to(dtype)
            bm[(i, group)] = b_.t().contiguous().to(dtype)
    return Slots(names, rank, tuple(sorted(groups)), a, bm, scale)
